//! The built-in task stream, generated from a seed with no files: four tasks over one
//! shared vocabulary that interfere when learned in sequence. Like tasks from different
//! domains that share a label set, each task reads its own window of the alphabet and all of
//! them answer with the same eight index words (the position of a symbol in its window), so
//! a new task pulls the shared answers towards its own rule. Every answer is one word, so a
//! small model learns each task in a few hundred steps; each task has a held-out
//! evaluation set.

use super::jsonl::Example;
use super::stream::{Task, TaskSettings};
use crate::rng::Rng;

/// The alphabet: one window of [`WINDOW`] symbols per task, in stream order.
pub const SYMBOLS: &[&str] = &[
    "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p", "q", "r", "s", "t", "u", "v", "w",
    "x", "y", "z", "A", "B", "C", "D", "E", "F",
];
/// Symbols per task window, and the number of answer words.
pub const WINDOW: usize = 8;
/// The answer words: positions in a window.
pub const ANSWERS: &[&str] = &["0", "1", "2", "3", "4", "5", "6", "7"];
/// Task prefixes, in stream order: the position of the largest symbol, of the smallest, the
/// half of the window most symbols come from (0 or 1), the quarter of the smallest (0-3).
pub const TASKS: &[&str] = &["max", "min", "half", "quarter"];

/// A word-level `tokenizer.json` over [`vocabulary`] with T5's conventions (pad 0, `</s>` 1,
/// unk 2, `</s>` appended), loadable by the tokenizers crate and by transformers.
pub fn tokenizer_json() -> String {
    word_tokenizer_json(&vocabulary())
}

/// A word-level `tokenizer.json` over `words` (ids from 3, after pad, `</s>` and unk).
pub fn word_tokenizer_json(words: &[String]) -> String {
    let specials = ["<pad>", "</s>", "<unk>"];
    let words: Vec<String> = specials.iter().map(|s| s.to_string()).chain(words.iter().cloned()).collect();
    let vocab: serde_json::Map<String, serde_json::Value> =
        words.iter().enumerate().map(|(i, w)| (w.clone(), serde_json::json!(i))).collect();
    let added: Vec<serde_json::Value> = specials
        .iter()
        .enumerate()
        .map(|(i, s)| {
            serde_json::json!({"id": i, "content": s, "single_word": false, "lstrip": false, "rstrip": false,
                               "normalized": false, "special": true})
        })
        .collect();
    let eos = serde_json::json!({"SpecialToken": {"id": "</s>", "type_id": 0}});
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"Sequence": {"id": "A", "type_id": 0}}, eos],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, eos, {"Sequence": {"id": "B", "type_id": 0}}, eos],
            "special_tokens": {"</s>": {"id": "</s>", "ids": [1], "tokens": ["</s>"]}}
        },
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    })
    .to_string()
}

/// Every word the synthetic tasks use, for building a word-level tokenizer.
pub fn vocabulary() -> Vec<String> {
    let mut words: Vec<String> = TASKS.iter().map(|t| format!("{t}:")).collect();
    words.extend(SYMBOLS.iter().chain(ANSWERS).map(|s| s.to_string()));
    words
}

/// The answer of `task` on `symbols`, given as positions in the task's window.
fn answer(task: &str, symbols: &[usize]) -> &'static str {
    let (max, min) = (*symbols.iter().max().expect("non-empty"), *symbols.iter().min().expect("non-empty"));
    ANSWERS[match task {
        "max" => max,
        "min" => min,
        "quarter" => min * 4 / WINDOW,
        "half" => (2 * symbols.iter().filter(|&&i| i >= WINDOW / 2).count() > symbols.len()) as usize,
        _ => unreachable!("unknown synthetic task {task}"),
    }]
}

/// `n_train` + `n_eval` distinct examples per task, 3 to 5 symbols each, from `seed`.
/// Evaluation inputs never occur in the training set of the same task. Each task draws from
/// its own generator, and its training examples come first, so `n_eval` changes no training
/// example.
pub fn stream(seed: u64, n_train: usize, n_eval: usize) -> Vec<Task> {
    let mut seeds = Rng::new(seed);
    TASKS
        .iter()
        .enumerate()
        .map(|(t, &task)| {
            let mut rng = Rng::new(seeds.next_u64());
            let window = &SYMBOLS[t * WINDOW..(t + 1) * WINDOW];
            let mut seen = std::collections::HashSet::new();
            let mut examples = Vec::new();
            while examples.len() < n_train + n_eval {
                let len = 3 + rng.below(3);
                // odd lengths keep the halves free of ties
                let len = if task == "half" && len.is_multiple_of(2) { len + 1 } else { len };
                let symbols: Vec<usize> = (0..len).map(|_| rng.below(WINDOW)).collect();
                if seen.insert(symbols.clone()) {
                    let body = symbols.iter().map(|&i| window[i]).collect::<Vec<_>>().join(" ");
                    examples.push(Example::new(format!("{task}: {body}"), answer(task, &symbols).into()));
                }
            }
            let eval = examples.split_off(n_train);
            Task { name: task.to_string(), train: examples, eval, labels: None, settings: TaskSettings::default() }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_give_the_expected_answers() {
        assert_eq!(answer("max", &[2, 0, 5]), "5");
        assert_eq!(answer("min", &[2, 7, 5]), "2");
        assert_eq!(answer("quarter", &[6, 7, 5]), "2");
        assert_eq!(answer("quarter", &[3, 1]), "0");
        assert_eq!(answer("half", &[0, 1, 7]), "0");
        assert_eq!(answer("half", &[6, 1, 7]), "1");
    }

    #[test]
    fn tokenizer_round_trips_every_task() {
        let tok: tokenizers::Tokenizer = tokenizer_json().parse().unwrap();
        let enc = tok.encode("min: c a", true).unwrap();
        let vocab = vocabulary();
        let id = |w: &str| 3 + vocab.iter().position(|v| v == w).unwrap() as u32;
        assert_eq!(enc.get_ids(), &[id("min:"), id("c"), id("a"), 1]);
        for task in stream(1, 5, 2) {
            for e in task.train {
                let ids = tok.encode(e.target.as_str(), true).unwrap().get_ids().to_vec();
                assert!(!ids.contains(&2), "unknown word in {:?}", e.target);
                assert_eq!(tok.decode(&ids, true).unwrap(), e.target);
            }
        }
    }

    #[test]
    fn stream_is_seeded_disjoint_and_in_vocabulary() {
        let a = stream(7, 50, 20);
        let b = stream(7, 50, 20);
        assert_eq!(a.len(), TASKS.len());
        let vocab = vocabulary();
        for (t, (ta, tb)) in a.iter().zip(&b).enumerate() {
            assert_eq!(ta.train, tb.train);
            let window = &SYMBOLS[t * WINDOW..(t + 1) * WINDOW];
            for e in &ta.train {
                assert!(e.input.split(' ').skip(1).all(|w| window.contains(&w)), "{:?} leaves its window", e.input);
            }
            assert_eq!((ta.train.len(), ta.eval.len()), (50, 20));
            for e in &ta.eval {
                assert!(!ta.train.iter().any(|t| t.input == e.input), "eval input {:?} also in training", e.input);
            }
            for e in ta.train.iter().chain(&ta.eval) {
                for w in e.input.split(' ').chain(e.target.split(' ')) {
                    assert!(vocab.iter().any(|v| v == w), "{w} not in the vocabulary");
                }
            }
        }
        assert_ne!(stream(8, 50, 20)[0].train, a[0].train);
        let more_eval = stream(7, 50, 40);
        for (ta, tm) in a.iter().zip(&more_eval) {
            assert_eq!(ta.train, tm.train, "the evaluation size changed the training data");
            assert_eq!(ta.eval, tm.eval[..20]);
        }
    }
}
