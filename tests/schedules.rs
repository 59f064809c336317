//! Learning-rate schedules against Keras 3: `fixtures/schedules/keras_schedules.json`,
//! written by `tools/make_schedule_fixtures.py` (Keras's `CosineDecay` at every step of a
//! few runs; Keras's `ReduceLROnPlateau` callback driven over fixed metric sequences).

use densenet::runtime::train::{
    CosineConfig, EpochStats, Evaluation, Monitor, PlateauConfig, Progress, Schedule,
};
use serde_json::Value;

fn fixture() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/schedules/keras_schedules.json"
    );
    let text = std::fs::read_to_string(path).expect("the schedule fixture");
    serde_json::from_str(&text).expect("JSON")
}

fn f32_of(v: &Value) -> f32 {
    v.as_f64().expect("a number") as f32
}

fn usize_of(v: &Value) -> usize {
    v.as_u64().expect("an integer") as usize
}

fn lrs(case: &Value) -> Vec<f32> {
    case["lrs"].as_array().unwrap().iter().map(f32_of).collect()
}

#[test]
fn cosine_matches_keras_cosine_decay_at_every_step() {
    let fixture = fixture();
    let cases = fixture["cosine"].as_array().unwrap();
    assert_eq!(cases.len(), 5);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let base = f32_of(&case["base"]);
        let (epochs, steps) = (usize_of(&case["epochs"]), usize_of(&case["steps"]));
        let schedule = Schedule::Cosine(CosineConfig {
            warmup_epochs: usize_of(&case["warmup_epochs"]),
            warmup_start: f32_of(&case["warmup_start"]),
            alpha: f32_of(&case["alpha"]),
        });
        schedule.validate(epochs).unwrap();
        let keras = lrs(case);
        assert_eq!(keras.len(), epochs * steps, "{name}");
        for (s, &expected) in keras.iter().enumerate() {
            let at = Progress {
                epoch: s / steps,
                epochs,
                step: s % steps,
                steps,
            };
            let ours = schedule.lr(base, at, &[]);
            // Keras computes in float32 (the cosine near its end loses relative
            // precision there); we compute in f64 and round once. So the tolerance is
            // relative to the peak rate.
            assert!(
                (ours - expected).abs() <= 1e-6 * base,
                "{name}, step {s}: ours {ours}, Keras {expected}"
            );
        }
    }
}

/// An epoch whose every metric is `value` (the schedule reads the monitored one).
fn epoch(n: usize, value: f32) -> EpochStats {
    EpochStats {
        epoch: n,
        lr: 0.0,
        loss: value,
        train_accuracy: value,
        validation: Some(Evaluation {
            loss: value,
            accuracy: value,
            correct: 0,
            total: 1,
            top_k: 1,
            top_k_correct: 0,
            top_k_accuracy: value,
        }),
        images_per_sec: 1.0,
        seconds: 1.0,
        checkpoint: None,
    }
}

#[test]
fn plateau_matches_keras_reduce_lr_on_plateau_epoch_by_epoch() {
    let fixture = fixture();
    let cases = fixture["plateau"].as_array().unwrap();
    assert_eq!(cases.len(), 5);
    let mut reductions = 0;
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let config = PlateauConfig {
            monitor: case["monitor"]
                .as_str()
                .unwrap()
                .parse::<Monitor>()
                .unwrap(),
            factor: f32_of(&case["factor"]),
            patience: usize_of(&case["patience"]),
            min_delta: f32_of(&case["min_delta"]),
            cooldown: usize_of(&case["cooldown"]),
            min_lr: f32_of(&case["min_lr"]),
        };
        let schedule = Schedule::Plateau(config);
        let base = f32_of(&case["base"]);
        let history: Vec<EpochStats> = case["values"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, v)| epoch(i + 1, f32_of(v)))
            .collect();
        let keras = lrs(case);
        let epochs = history.len() + 1;
        schedule.validate(epochs).unwrap();
        assert_eq!(keras.len(), epochs, "{name}");
        for (e, &expected) in keras.iter().enumerate() {
            // Every step of an epoch gets the epoch's rate.
            for step in [0, 3] {
                let at = Progress {
                    epoch: e,
                    epochs,
                    step,
                    steps: 4,
                };
                let ours = schedule.lr(base, at, &history);
                assert!(
                    (ours - expected).abs() <= 1e-6 * expected,
                    "{name}, epoch {e}: ours {ours}, Keras {expected}"
                );
            }
        }
        reductions += keras.windows(2).filter(|w| w[1] < w[0]).count();
    }
    // The sequences exercise the schedule (patience, cooldown, floor), not just `base`.
    assert!(reductions >= 10, "{reductions} reductions");
}
