use super::*;
use serde_json::json;

fn target(status: Value) -> Value {
    json!({"metadata": {"name": "hex8-2p"}, "spec": {
        "board": "hex8", "players": 2, "selfplaySelector": {"board": "hex8"},
        "firstTrainingGames": 200, "retrainGames": 200, "cooldownSeconds": 1200,
        "training": {"spec": {"command": ["true"]}}}, "status": status})
}

#[test]
fn a_training_target_says_its_state_in_words_and_games_per_job() {
    let now: DateTime<Utc> = "2026-11-22T12:00:00Z".parse().unwrap();
    let cooling = target(
        json!({"gamesSinceLastTraining": 40, "totalGames": 240, "trainingGeneration": 1,
        "artifactGames": 0, "gamesRevision": 0,
        "ledger": {"selfplay-0/u1/1/1": 100, "selfplay-0/u1/1/2": 20, "selfplay-1/u2/1/1": 120},
        "history": [{"generation": 1, "job": "hex8-2p-train-1", "winRate": 0.61, "promoted": true,
                     "finishedAt": "2026-11-22T11:54:00Z", "outcome": "promoted"}]}),
    );
    let text = training_target(&cooling, now);
    for part in [
        "cooling down, 14 m left",
        "40 new since the last training (200 start one)",
        "selfplay-0   120     2",
        "selfplay-1   120     1",
        "0.61",
        "yes",
    ] {
        assert!(text.contains(part), "`{part}` not in:\n{text}");
    }
    assert!(
        !text.contains("From shards"),
        "no shards counted: no line\n{text}"
    );
    let shards = target(json!({"gamesSinceLastTraining": 500, "totalGames": 500,
        "artifactGames": 500, "gamesRevision": 42, "trainedRevision": 0}));
    let text = training_target(&shards, now);
    assert!(
        text.contains("500 games in game artifacts (counted through etcd revision 42"),
        "{text}"
    );
    let waiting = target(json!({"gamesSinceLastTraining": 120}));
    assert!(training_target(&waiting, now).contains("waiting: 120/200 new games"));
    let running = target(json!({"activeJob": "hex8-2p-train-2"}));
    assert!(training_target(&running, now).contains("running hex8-2p-train-2"));
}

#[test]
fn a_job_names_its_gpus_by_count_and_index() {
    let j = json!({"spec": {"type": "selfplay", "resources": {"gpus": 1}, "command": ["sh"]},
        "status": {"phase": "Running", "node": "local", "gpus": [0], "progress": {"games": 240.0}}});
    let text = job(&j, Utc::now());
    assert!(text.contains("GPUs:         1 (GPU 0)"), "{text}");
    assert!(text.contains("games=240"), "{text}");
}

#[test]
fn a_reload_pool_shows_the_model_each_member_holds_and_why_one_keeps_the_old() {
    let p = serde_json::json!({
        "spec": {"replicas": 2, "model": {"fromTrainingTarget": "t", "update": "Reload"}},
        "status": {"currentModel": format!("sha256-{}", "b".repeat(64))}
    });
    let old = format!("sha256-{}", "a".repeat(64));
    let member = |name: &str, held: &str, problem: &str| {
        serde_json::json!({
            "metadata": {"name": name},
            "spec": {"inputs": [{"name": "model", "artifacts": [old]}]},
            "status": {"phase": "Running", "model": {"held": held, "problem": problem}}
        })
    };
    let new = format!("sha256-{}", "b".repeat(64));
    let out = pool(
        &p,
        &[member("sp-0", &new, ""), member("sp-1", &old, "store down")],
    );
    assert!(out.contains(&new[..19]), "{out}");
    assert!(out.contains("sp-1 keeps its model: store down"), "{out}");
    assert!(!out.contains("sp-0 keeps"), "{out}");
}
