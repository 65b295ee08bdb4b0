//! Aligned columns for tables, with widths that can be kept: a watch prints later rows under
//! the header of its first table.

/// Column widths fixed by a first table, so that rows printed later (a watch's changes) line
/// up under its header. A later cell wider than its column pushes the rest of its row right;
/// nothing is cut.
#[derive(Clone, Debug, Default)]
pub struct Columns {
    widths: Vec<usize>,
}

/// Spaces between columns.
const PADDING: usize = 3;

impl Columns {
    /// Widths that fit `headers` and `rows`.
    pub fn fit(headers: &[&str], rows: &[Vec<String>]) -> Columns {
        let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
        for r in rows {
            for (i, c) in r.iter().enumerate() {
                let n = clean(c).chars().count();
                match widths.get_mut(i) {
                    Some(w) => *w = (*w).max(n),
                    None => widths.push(n),
                }
            }
        }
        Columns { widths }
    }

    /// One line: every cell but the last padded to its column.
    pub fn line(&self, cells: &[String]) -> String {
        let mut out = String::new();
        let mut overflow = 0usize;
        for (i, c) in cells.iter().enumerate() {
            let c = clean(c);
            out.push_str(&c);
            if i + 1 == cells.len() {
                break;
            }
            let width = self.widths.get(i).copied().unwrap_or(0);
            let len = c.chars().count() + overflow;
            overflow = len.saturating_sub(width);
            out.push_str(&" ".repeat(width.saturating_sub(len) + PADDING));
        }
        out.trim_end().to_string()
    }
}

fn clean(cell: &str) -> String {
    cell.replace(['\t', '\n'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_rows_line_up_under_the_first_tables_header() {
        let cols = Columns::fit(
            &["NAME", "PHASE", "AGE"],
            &[vec!["a".into(), "Running".into(), "5s".into()]],
        );
        let header = cols.line(&["NAME".into(), "PHASE".into(), "AGE".into()]);
        let later = cols.line(&["bb".into(), "Pending".into(), "1s".into()]);
        assert_eq!(header.find("PHASE"), later.find("Pending"));
        assert_eq!(header.find("AGE"), later.find("1s"));
    }
}
