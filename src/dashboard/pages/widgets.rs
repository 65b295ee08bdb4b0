//! Small pieces every page uses: bars, badges, times, numbers, charts and the pager. All of
//! them go through maud, which escapes every value; none writes an inline style or script (the
//! Content-Security-Policy forbids both), so bars are SVG rectangles sized by attributes.

use chrono::{DateTime, Utc};
use maud::{html, Markup};
use serde::Serialize;

use crate::api::JobPhase;

/// A horizontal bar filled to `percent` (clamped to 0..=100), with `label` as its tooltip.
pub fn bar(percent: f64, class: &str, label: &str) -> Markup {
    let p = if percent.is_nan() {
        0.0
    } else {
        percent.clamp(0.0, 100.0)
    };
    let level = if p >= 90.0 {
        "hot"
    } else if p >= 70.0 {
        "warm"
    } else {
        "ok"
    };
    html! {
        svg class={"bar " (class) " " (level)} viewBox="0 0 100 6" preserveAspectRatio="none"
            role="img" aria-label=(label) {
            title { (label) }
            rect class="track" width="100" height="6" {}
            rect class="fill" width=(format!("{p:.1}")) height="6" {}
        }
    }
}

/// A labelled bar with its figure: `CPU ▇▇▁ 42%`.
pub fn meter(name: &str, percent: f64) -> Markup {
    let label = format!("{name} {}", pct(percent));
    html! {
        span.meter {
            span.meter-name { (name) }
            (bar(percent, "", &label))
            span.meter-figure { (pct(percent)) }
        }
    }
}

pub fn pct(p: f64) -> String {
    if p.is_nan() {
        "–".into()
    } else {
        format!("{p:.0}%")
    }
}

pub fn phase_badge(phase: JobPhase) -> Markup {
    html! { span class={"badge phase-" (phase.as_str().to_ascii_lowercase())} { (phase.as_str()) } }
}

/// A badge of one of the classes the stylesheet colours: `ok`, `warn`, `bad`, `info`, `muted`.
pub fn badge(class: &str, text: &str) -> Markup {
    html! { span class={"badge " (class)} { (text) } }
}

/// A point in time: absolute in the markup (so a page's markup changes only when the data
/// does), shown as an age ("42s ago") by the page's script, which keeps it current.
pub fn time(at: Option<DateTime<Utc>>) -> Markup {
    match at {
        Some(t) => html! {
            time.age datetime=(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                title=(t.format("%Y-%m-%d %H:%M:%S UTC")) {
                (t.format("%Y-%m-%d %H:%M:%S"))
            }
        },
        None => html! { span.muted { "–" } },
    }
}

/// `n` bytes in binary units, e.g. `80 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 || v >= 10.0 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A number with thin thousands separators: `12 345`.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push('\u{202f}');
        }
        out.push(c);
    }
    out
}

/// A line chart the page's script draws with uPlot from the JSON in `data-chart`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Chart {
    pub id: String,
    pub title: String,
    /// Unix seconds.
    pub x: Vec<i64>,
    pub series: Vec<Series>,
    /// A value the y axis always shows (e.g. 0 for counts), whatever the data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub y_min: Option<f64>,
    /// Likewise at the top (e.g. 1 for win rates).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub y_max: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Series {
    pub label: String,
    pub values: Vec<Option<f64>>,
    /// One of the stylesheet's chart colours, by position: 0 blue, 1 green, 2 orange, 3 grey.
    pub color: u8,
    pub style: Style,
}

/// How a series is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Style {
    /// A line with the area below it filled.
    Area,
    Line,
    /// A line with a dot at each value (sparse series: one value per run).
    Dots,
    /// Dots alone.
    Points,
    /// A dashed line (a threshold).
    Dashed,
}

impl Chart {
    /// The chart's box. A chart whose data did not change keeps its element across live
    /// updates (`hx-preserve`, keyed by a hash of the data), so it is not redrawn, and does
    /// not flicker, every time something else on the page changes.
    pub fn render(&self) -> Markup {
        let points = self.x.len();
        let data = serde_json::to_string(self).expect("charts serialize");
        let key = format!(
            "{}-{}",
            self.id,
            &crate::dashboard::live::fragment_hash(&data)[..8]
        );
        html! {
            figure.chart-box {
                figcaption { (self.title) }
                @if points == 0 {
                    p.chart-empty { "no data yet" }
                } @else {
                    div.chart id=(key) data-name=(self.id) data-points=(points) hx-preserve="true"
                        data-chart=(data) {}
                }
            }
        }
    }
}

/// Which slice of a long list a page shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slice {
    /// 1-based.
    pub page: usize,
    pub pages: usize,
    pub start: usize,
    pub end: usize,
    pub total: usize,
}

/// The rows of page `page` (1-based; past the end means the last page) of `total` rows,
/// `per_page` at a time.
pub fn slice(total: usize, page: usize, per_page: usize) -> Slice {
    let pages = total.div_ceil(per_page).max(1);
    let page = page.clamp(1, pages);
    let start = ((page - 1) * per_page).min(total);
    let end = (start + per_page).min(total);
    Slice {
        page,
        pages,
        start,
        end,
        total,
    }
}

/// Links to the first, previous, next and last pages; `href(n)` makes page `n`'s address.
pub fn pager(s: Slice, href: impl Fn(usize) -> String) -> Markup {
    html! {
        nav.pager aria-label="pages" {
            span.pager-range {
                @if s.total == 0 { "none" } @else {
                    (count((s.start + 1) as u64)) "–" (count(s.end as u64)) " of " (count(s.total as u64))
                }
            }
            @if s.pages > 1 {
                @if s.page > 1 {
                    a href=(href(1)) { "« first" }
                    a href=(href(s.page - 1)) rel="prev" { "‹ prev" }
                }
                span.pager-page { "page " (s.page) " of " (s.pages) }
                @if s.page < s.pages {
                    a href=(href(s.page + 1)) rel="next" { "next ›" }
                    a href=(href(s.pages)) { "last »" }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_clamp_to_the_rows_there_are() {
        assert_eq!(slice(10_000, 1, 100).end, 100);
        let last = slice(10_000, 1_000_000, 100);
        assert_eq!(
            (last.page, last.pages, last.start, last.end),
            (100, 100, 9900, 10_000)
        );
        let empty = slice(0, 3, 100);
        assert_eq!(
            (empty.page, empty.pages, empty.start, empty.end),
            (1, 1, 0, 0)
        );
        assert_eq!(slice(5, 0, 100).page, 1, "page 0 is the first");
    }

    #[test]
    fn bars_never_overflow_and_figures_read_well() {
        let over = bar(250.0, "", "x").into_string();
        assert!(over.contains(r#"class="fill" width="100.0""#), "{over}");
        assert!(bar(f64::NAN, "", "x")
            .into_string()
            .contains(r#"width="0.0""#));
        assert_eq!(bytes(85_899_345_920), "80 GiB");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(count(1_234_567), "1\u{202f}234\u{202f}567");
        assert_eq!(count(999), "999");
    }
}
