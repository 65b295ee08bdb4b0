//! Training: per TrainingTarget, the games since the last run against the threshold that
//! starts the next, games per hour, generations, the current model, and as charts the games
//! over time, each run's win rate and the Elo the promoted models gained; then the timeline
//! of runs.
//!
//! Elo: a candidate that won a share `p` of its evaluation games against the current model is
//! `ΔElo = 400·log10(p / (1 − p))` stronger ([`elo_gain`]); the curve adds the gains of
//! promoted runs, starting from 0 for the first model ([`elo_curve`]). Runs are those etcd
//! holds plus those the dashboard saw while running ([`History`]).
//!
//! Model artifacts and their rollout to Pools come with the data plane: the "Model" card is
//! where they will show; today it shows the model name TrainingTarget status holds.

use chrono::{DateTime, Utc};
use maud::{html, Markup};

use super::widgets::{badge, bar, count, time, Chart, Series, Style};
use super::{unread, Rendered};
use crate::api::training_target::TrainingRun;
use crate::api::TrainingTarget;
use crate::controllers::training::games_threshold;
use crate::dashboard::history::History;
use crate::dashboard::source::View;

/// Win rates are clamped to this distance from 0 and 1 before the Elo formula (±798 Elo), so
/// a clean sweep does not read as infinitely stronger.
pub const WIN_RATE_CLAMP: f64 = 0.01;

/// The Elo difference a win rate `p` against the current model means; `None` for NaN.
pub fn elo_gain(p: f64) -> Option<f64> {
    if p.is_nan() {
        return None;
    }
    let p = p.clamp(WIN_RATE_CLAMP, 1.0 - WIN_RATE_CLAMP);
    Some(400.0 * (p / (1.0 - p)).log10())
}

/// `(when, Elo, generation)` after each promoted run with a win rate, in generation order; the
/// model before the first promotion is Elo 0.
pub fn elo_curve(runs: &[&TrainingRun]) -> Vec<(DateTime<Utc>, f64, u64)> {
    let mut elo = 0.0;
    let mut out = Vec::new();
    for run in runs {
        if !run.promoted {
            continue;
        }
        let (Some(at), Some(gain)) = (run.finished_at, run.win_rate.and_then(elo_gain)) else {
            continue;
        };
        elo += gain;
        out.push((at, elo, run.generation));
    }
    out
}

pub fn render(view: &View, history: &History) -> Rendered {
    if unread(view) {
        return Rendered::ok(html! {});
    }
    let c = &view.cluster;
    Rendered::ok(html! {
        @if c.targets.is_empty() {
            p.muted { "No TrainingTargets. Apply one (see manifests/demo/training.yaml) and it shows here." }
        }
        @for t in &c.targets { (target(t, history, c.taken_at)) }
    })
}

fn target(t: &TrainingTarget, history: &History, now: DateTime<Utc>) -> Markup {
    let st = t.status.clone().unwrap_or_default();
    let threshold = games_threshold(&t.spec, &st);
    let progress = st.games_since_last_training as f64 * 100.0 / threshold.max(1) as f64;
    let runs = history.runs(t.name());
    let rate = history.games_per_hour(t.name(), now);
    let promote_at = t.spec.evaluation.as_ref().map(|e| e.promote_win_rate);
    html! {
        section.target id={"target-" (t.name())} {
            h2 { (t.name()) " " span.muted { (t.spec.board) " · " (t.spec.players) " players" } }
            div.cards {
                div.card {
                    h3 { "Next run" }
                    p.big { (count(st.games_since_last_training)) " / " (count(threshold)) " games" }
                    (bar(progress, "wide-bar progress", "games toward the next run"))
                    p.sub {
                        @if let Some(job) = &st.active_job {
                            "running: " a href={"/jobs/" (job)} { (job) }
                        } @else if !st.message.is_empty() {
                            (st.message)
                        }
                    }
                }
                div.card {
                    h3 { "Games" }
                    p.big { (count(st.total_games)) }
                    p.sub {
                        @match rate {
                            Some(r) => {
                                (count(r.per_hour.round() as u64)) " per hour"
                                @if r.over.as_secs() < 3600 { " (over " (r.over.as_secs() / 60) " min)" }
                            }
                            None => "per hour: measuring",
                        }
                    }
                }
                div.card {
                    h3 { "Generations" }
                    p.big { (st.training_generation) }
                    p.sub { "last trained " (time(st.last_trained_at)) }
                }
                div.card.model {
                    h3 { "Model" }
                    p.big { @if let Some(m) = &st.current_model { code { (m) } } @else { span.muted { "none yet" } } }
                    p.sub.muted { "rollout to Pools shows here once models are artifacts" }
                }
            }
            div.charts {
                (games_chart(t.name(), history).render())
                (win_rate_chart(t.name(), &runs, promote_at).render())
                (elo_chart(t.name(), &runs).render())
            }
            (timeline(&runs))
        }
    }
}

fn games_chart(name: &str, history: &History) -> Chart {
    let samples: Vec<_> = history.target(name).into_iter().flatten().collect();
    Chart {
        id: format!("chart-games-{name}"),
        title: "Games (24 h)".into(),
        x: samples.iter().map(|s| s.at.timestamp()).collect(),
        series: vec![Series {
            label: "total games".into(),
            values: samples.iter().map(|s| Some(s.games as f64)).collect(),
            color: 0,
            style: Style::Area,
        }],
        y_min: None,
        y_max: None,
    }
}

fn win_rate_chart(name: &str, runs: &[&TrainingRun], promote_at: Option<f64>) -> Chart {
    let rated: Vec<(i64, f64)> = runs
        .iter()
        .filter_map(|r| Some((r.finished_at?.timestamp(), r.win_rate?)))
        .collect();
    let mut series = vec![Series {
        label: "win rate".into(),
        values: rated.iter().map(|r| Some(r.1)).collect(),
        color: 1,
        style: Style::Points,
    }];
    if let Some(p) = promote_at {
        series.push(Series {
            label: "promotion gate".into(),
            values: rated.iter().map(|_| Some(p)).collect(),
            color: 3,
            style: Style::Dashed,
        });
    }
    Chart {
        id: format!("chart-winrate-{name}"),
        title: "Win rate of each run".into(),
        x: rated.iter().map(|r| r.0).collect(),
        series,
        y_min: Some(0.0),
        y_max: Some(1.0),
    }
}

fn elo_chart(name: &str, runs: &[&TrainingRun]) -> Chart {
    let curve = elo_curve(runs);
    Chart {
        id: format!("chart-elo-{name}"),
        title: "Elo of the promoted models (the first model is 0)".into(),
        x: curve.iter().map(|p| p.0.timestamp()).collect(),
        series: vec![Series {
            label: "Elo".into(),
            values: curve
                .iter()
                .map(|p| Some((p.1 * 10.0).round() / 10.0))
                .collect(),
            color: 2,
            style: Style::Dots,
        }],
        y_min: Some(0.0),
        y_max: None,
    }
}

fn timeline(runs: &[&TrainingRun]) -> Markup {
    html! {
        h3 { "Runs" }
        @if runs.is_empty() { p.muted { "No run yet." } }
        @else {
            div.scroll {
                table.runs {
                    thead { tr { th { "Gen" } th { "Outcome" } th { "Win rate" } th { "ΔElo" } th.wide { "Candidate" } th { "Finished" } th.wide { "Job" } } }
                    tbody {
                        @for r in runs.iter().rev() {
                            tr class=(if r.promoted { "promoted" } else { "" }) {
                                td { (r.generation) }
                                td {
                                    @if r.promoted { (badge("ok", "promoted")) }
                                    @else if r.finished_at.is_none() { (badge("info", "running")) }
                                    @else { (badge("muted", "not promoted")) }
                                    @if !r.outcome.is_empty() { " " span.muted { (r.outcome) } }
                                }
                                td { @if let Some(w) = r.win_rate { (format!("{w:.3}")) } @else { "–" } }
                                td { @if let Some(g) = r.win_rate.and_then(elo_gain) { (format!("{g:+.0}")) } @else { "–" } }
                                td.wide { @if let Some(m) = &r.candidate { code { (m) } } }
                                td { (time(r.finished_at)) }
                                td.wide { a href={"/jobs/" (r.job)} { (r.job) } }
                            }
                        }
                    }
                }
            }
        }
    }
}
