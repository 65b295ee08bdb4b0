use chrono::Utc;
use serde_json::json;

use super::*;
use crate::api::{Event, Job};
use crate::dashboard::cluster::{Cluster, Parts};
use crate::dashboard::fixtures;
use crate::dashboard::history::History;
use crate::dashboard::source::Link;
use crate::store::leader::LeaderRecord;

const SCRIPT: &str = "<script>alert(1)</script>";

fn live() -> Link {
    Link::Live { since: Utc::now() }
}

fn source(parts: Parts) -> Source {
    let cluster = Cluster::assemble(Parts {
        revision: 7,
        taken_at: Utc::now(),
        leader: Some(LeaderRecord {
            node: "a".into(),
            since: Utc::now(),
            lease: 1,
            endpoint: None,
        }),
        ..parts
    });
    let mut history = History::default();
    history.remember_runs(&cluster);
    history.sample(&cluster, Utc::now());
    Source::fixed(cluster, live(), history)
}

fn html(page: &Page, source: &Source, query: &Query) -> (u16, String) {
    let r = render(page, source, query);
    (r.status.as_u16(), r.fragment.into_string())
}

fn every_page() -> Vec<Page> {
    vec![
        Page::Overview,
        Page::Nodes,
        Page::Jobs,
        Page::Job("evil".into()),
        Page::Training,
        Page::Events,
        Page::Voters,
        Page::Tunnels,
    ]
}

/// Objects whose free text (as anything writing to etcd may have left it) is markup.
fn hostile() -> Parts {
    let mut job: Job = fixtures::job("evil", "Failed", Some("a"), &[0]);
    job.metadata.labels.insert("app".into(), SCRIPT.into());
    job.spec.command = vec!["sh".into(), "-c".into(), SCRIPT.into()];
    let mut st = job.status.clone().unwrap();
    st.message = SCRIPT.into();
    st.progress.insert(SCRIPT.into(), 1.0);
    job.status = Some(st);
    let mut node = fixtures::node("a", false, 2);
    node.metadata.labels.insert(SCRIPT.into(), SCRIPT.into());
    node.spec.provider = SCRIPT.into();
    let mut target = fixtures::target("t", 10, &[(1, Some(0.6), true)], Utc::now());
    target.status.as_mut().unwrap().message = SCRIPT.into();
    target.status.as_mut().unwrap().history[0].candidate = Some(SCRIPT.into());
    let mut tunnel = fixtures::tunnel("tun", "a", false);
    tunnel.status.as_mut().unwrap().last_error = SCRIPT.into();
    let event: Event = serde_json::from_value(json!({
        "apiVersion": "rift/v1", "kind": "Event", "metadata": {"name": "e1"},
        "spec": {"involvedObject": {"kind": "Job", "name": "evil"}, "reason": SCRIPT,
                 "message": SCRIPT, "type": "Warning", "count": 2,
                 "firstSeen": Utc::now(), "lastSeen": Utc::now(), "source": SCRIPT}
    }))
    .unwrap();
    let voter_set = serde_json::from_value(json!({
        "apiVersion": "rift/v1", "kind": "VoterSet", "metadata": {"name": "default"},
        "spec": {"voters": ["a"]},
        "status": {"phase": "Blocked", "message": SCRIPT, "quorum": true,
                   "members": [{"name": SCRIPT, "id": "8e9e05c52164694d", "healthy": false}]}
    }))
    .unwrap();
    Parts {
        nodes: vec![node],
        jobs: vec![job],
        targets: vec![target],
        tunnels: vec![tunnel],
        events: vec![event],
        voter_set: Some(voter_set),
        ..Parts::default()
    }
}

#[test]
fn markup_in_names_labels_and_messages_comes_out_escaped_on_every_page() {
    let s = source(hostile());
    for page in every_page() {
        let (status, body) = html(&page, &s, &Query::default());
        assert_eq!(status, 200, "{page:?}");
        assert!(
            !body.contains("<script"),
            "{page:?} lets markup through:\n{body}"
        );
        assert!(
            body.contains("&lt;script&gt;"),
            "{page:?} shows the text escaped"
        );
    }
    let with_query = Query {
        l: Some(format!("app={SCRIPT}")),
        q: Some(SCRIPT.into()),
        ..Query::default()
    };
    let (_, body) = html(&Page::Jobs, &s, &with_query);
    assert!(!body.contains("<script"), "a query is escaped too:\n{body}");
    let controls = super::controls(&Page::Jobs, &with_query)
        .unwrap()
        .into_string();
    assert!(!controls.contains("<script") && controls.contains("&lt;script&gt;"));
    let nf = not_found("/<script>x").into_string();
    assert!(!nf.contains("<script") && nf.contains("&lt;script&gt;"));
}

#[test]
fn only_known_paths_are_pages_and_a_job_path_takes_only_a_valid_name() {
    assert_eq!(Page::from_path("/"), Some(Page::Overview));
    assert_eq!(Page::from_path("/jobs/"), Some(Page::Jobs));
    assert_eq!(
        Page::from_path("/jobs/train-1"),
        Some(Page::Job("train-1".into()))
    );
    for bad in [
        "/nope",
        "/jobs/Bad_Name",
        "/jobs/a/b",
        "/jobs/..",
        "/jobs/%3Cscript%3E",
        "/jobs/<script>",
        "//",
    ] {
        assert_eq!(Page::from_path(bad), None, "{bad}");
    }
    for page in every_page() {
        assert_eq!(Page::from_path(&page.path()), Some(page.clone()));
    }
}

#[test]
fn bad_filters_are_answered_with_what_to_type_instead() {
    let s = source(hostile());
    let ask = |page: Page, q: Query| html(&page, &s, &q);
    let (status, body) = ask(
        Page::Nodes,
        Query {
            l: Some("gpu=h100,=oops".into()),
            ..Query::default()
        },
    );
    assert_eq!(status, 400);
    assert!(body.contains("invalid label selector"), "{body}");
    let (status, body) = ask(
        Page::Jobs,
        Query {
            phase: Some("Exploded".into()),
            ..Query::default()
        },
    );
    assert_eq!(status, 400);
    assert!(
        body.contains("Pending, Scheduled, Running, Succeeded, Failed"),
        "{body}"
    );
    let (status, body) = ask(
        Page::Events,
        Query {
            page: Some("-1".into()),
            ..Query::default()
        },
    );
    assert_eq!(status, 400);
    assert!(body.contains("pages count from 1"), "{body}");
    let (status, _) = ask(
        Page::Events,
        Query {
            event_type: Some("Loud".into()),
            ..Query::default()
        },
    );
    assert_eq!(status, 400);
    let (status, body) = ask(Page::Job("nobody".into()), Query::default());
    assert_eq!(status, 404);
    assert!(body.contains("shows it as soon as it is created"), "{body}");
}

#[test]
fn ten_thousand_jobs_are_shown_a_hundred_at_a_time_failed_and_pending_first() {
    let mut jobs: Vec<Job> = (0..10_000)
        .map(|i| fixtures::job(&format!("job-{i:05}"), "Running", Some("a"), &[]))
        .collect();
    jobs.push(fixtures::job("zz-failed", "Failed", Some("a"), &[]));
    jobs.push(fixtures::job("zz-pending", "Pending", None, &[]));
    let s = source(Parts {
        nodes: vec![fixtures::node("a", true, 8)],
        jobs,
        ..Parts::default()
    });
    let (status, body) = html(&Page::Jobs, &s, &Query::default());
    assert_eq!(status, 200);
    assert_eq!(body.matches("<tr id=\"job-").count(), PER_PAGE);
    assert!(body.contains("1–100 of 10\u{202f}002"), "{body:.2000}");
    let failed = body.find("job-zz-failed").unwrap();
    let pending = body.find("job-zz-pending").unwrap();
    let running = body.find("job-job-00000").unwrap();
    assert!(
        failed < pending && pending < running,
        "failed, then pending, then the rest"
    );

    let last = Query {
        page: Some("1000000".into()),
        ..Query::default()
    };
    let (_, body) = html(&Page::Jobs, &s, &last);
    assert!(
        body.contains("page 101 of 101"),
        "a page past the end is the last"
    );
    assert_eq!(body.matches("<tr id=\"job-").count(), 2);

    let running_only = Query {
        phase: Some("running".into()),
        q: Some("job-0999".into()),
        ..Query::default()
    };
    let (_, body) = html(&Page::Jobs, &s, &running_only);
    assert_eq!(
        body.matches("<tr id=\"job-").count(),
        10,
        "job-09990 .. job-09999"
    );
}

#[test]
fn the_nodes_page_shows_who_holds_each_gpu_and_filters_by_label() {
    let mut b = fixtures::node("b", true, 2);
    b.metadata.labels.insert("gpu".into(), "a100".into());
    let s = source(Parts {
        nodes: vec![fixtures::node("a", true, 4), b],
        jobs: vec![fixtures::job("train", "Running", Some("a"), &[1, 2])],
        ..Parts::default()
    });
    let (_, body) = html(&Page::Nodes, &s, &Query::default());
    assert_eq!(body.matches("class=\"gpu held\"").count(), 2, "{body}");
    assert!(body.contains("GPU 1 · H100 · held by train"));
    assert!(body.contains("GPU 0 · H100 · free"));
    let (_, body) = html(
        &Page::Nodes,
        &s,
        &Query {
            l: Some("gpu=a100".into()),
            ..Query::default()
        },
    );
    assert!(body.contains("id=\"node-b\"") && !body.contains("id=\"node-a\""));
}

#[test]
fn elo_follows_the_win_rate_of_promoted_runs() {
    assert_eq!(elo_gain(0.5), Some(0.0));
    assert!((elo_gain(0.61).unwrap() - 77.71).abs() < 0.01);
    assert!(
        (elo_gain(1.0).unwrap() - 798.25).abs() < 0.01,
        "a sweep is capped"
    );
    assert_eq!(elo_gain(1.0), elo_gain(2.0));
    assert!(elo_gain(0.0).unwrap() < -798.0);
    assert_eq!(elo_gain(f64::NAN), None);
    let t = fixtures::target(
        "t",
        0,
        &[
            (1, Some(0.75), true),
            (2, Some(0.4), false),
            (3, None, true),
            (4, Some(0.6), true),
        ],
        Utc::now(),
    );
    let runs: Vec<_> = t.status.as_ref().unwrap().history.iter().collect();
    let curve = elo_curve(&runs);
    let gens: Vec<u64> = curve.iter().map(|p| p.2).collect();
    assert_eq!(gens, [1, 4], "only promoted runs with a win rate");
    let expected = elo_gain(0.75).unwrap() + elo_gain(0.6).unwrap();
    assert!((curve[1].1 - expected).abs() < 1e-9);
}

#[test]
fn a_page_read_while_etcd_is_away_says_so() {
    let cluster = Cluster::default();
    let s = Source::fixed(
        cluster,
        Link::Unreachable {
            since: Utc::now(),
            error: "connection refused".into(),
        },
        History::default(),
    );
    for page in every_page() {
        let (_, body) = html(&page, &s, &Query::default());
        assert!(body.contains("etcd unreachable"), "{page:?}: {body}");
        assert!(body.contains("Nothing has been read yet"), "{page:?}");
    }
}
