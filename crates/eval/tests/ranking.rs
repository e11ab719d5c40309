//! Label ranking (`Scorer::rank_rows`: rows batched on one forward, a shared prefix cached,
//! each candidate a branch off its row) against a direct computation: each prompt with each
//! candidate run alone from scratch, full logits, log-softmax, Σ log p of the candidate.

mod common;

use common::direct_log_probs;
use tuna_eval::scoring::{PromptAndAnswers, Scorer};
use tuna_model::{LoadOptions, Pretrained};
use tuna_testkit::{tiny_model, TinySpec};

fn direct_score(p: &Pretrained, prompt: &[u32], candidate: &[u32]) -> f64 {
    if candidate.is_empty() {
        return f64::NEG_INFINITY;
    }
    let ids: Vec<u32> = prompt.iter().chain(candidate).copied().collect();
    let logp = direct_log_probs(p, &ids);
    (0..candidate.len())
        .map(|j| logp[prompt.len() + j - 1][candidate[j] as usize] as f64)
        .sum()
}

fn row(prompt: &[u32], candidates: &[&[u32]]) -> PromptAndAnswers {
    PromptAndAnswers {
        prompt: prompt.to_vec(),
        candidates: candidates.iter().map(|c| c.to_vec()).collect(),
    }
}

fn assert_scores(p: &Pretrained, rows: &[PromptAndAnswers], got: &[Vec<f64>], what: &str) {
    assert_eq!(got.len(), rows.len(), "{what}: one score list per row");
    for (r, (row, scores)) in rows.iter().zip(got).enumerate() {
        assert_eq!(scores.len(), row.candidates.len(), "{what}: row {r}");
        for (c, (candidate, &score)) in row.candidates.iter().zip(scores).enumerate() {
            let want = direct_score(p, &row.prompt, candidate);
            if want.is_infinite() {
                assert_eq!(score, want, "{what}: row {r} candidate {c}");
            } else {
                assert!(
                    (score - want).abs() < 1e-4 * want.abs().max(1.0),
                    "{what}: row {r} candidate {c}: {score} vs {want}"
                );
            }
        }
    }
}

/// Rows sharing a prefix of 5 tokens, of different lengths (one is the prefix plus one
/// token), with candidates of 0 to 3 tokens.
fn rows() -> Vec<PromptAndAnswers> {
    let candidates: [&[u32]; 4] = [&[7], &[9, 11, 3], &[], &[12, 5]];
    vec![
        row(&[1, 20, 21, 22, 23, 30, 31, 32], &candidates),
        row(&[1, 20, 21, 22, 23, 40], &candidates),
        row(&[1, 20, 21, 22, 23, 50, 51, 52, 53, 54], &candidates[..2]),
    ]
}

#[test]
fn rows_ranked_together_score_like_each_candidate_run_alone() {
    for spec in [
        TinySpec::default(),
        TinySpec {
            sliding_window: Some(4),
            model_type: "mistral",
            ..TinySpec::default()
        },
    ] {
        let what = spec.model_type;
        let m = tiny_model(spec);
        let p = Pretrained::load(&m.path_str(), &LoadOptions::default()).unwrap();
        let rows = rows();
        let mut scorer = Scorer::new(&p);
        let together = scorer.rank_rows(&rows).unwrap();
        assert_scores(&p, &rows, &together, what);
        // The shared prefix ran once: 5 tokens, then the rows' own 3 + 1 + 5 and the
        // candidates' tokens after their first, 3 + 3 + 2.
        assert_eq!(scorer.usage.computed_tokens, 22, "{what}");
        // The cache now holds the shared prefix; a later call continuing a different part
        // of it, one row at a time, must not see the earlier rows.
        let other = [
            row(&[1, 20, 60, 61], &[&[7], &[9, 11]]),
            row(&[1, 20, 21, 22, 23, 40], &[&[12, 5]]),
        ];
        let one_by_one: Vec<Vec<f64>> = other
            .iter()
            .map(|r| scorer.rank_rows(std::slice::from_ref(r)).unwrap().remove(0))
            .collect();
        assert_scores(&p, &other, &one_by_one, what);
    }
}

#[test]
fn a_one_token_prompt_and_an_empty_batch_rank() {
    let m = tiny_model(TinySpec::default());
    let p = Pretrained::load(&m.path_str(), &LoadOptions::default()).unwrap();
    let mut scorer = Scorer::new(&p);
    assert!(scorer.rank_rows(&[]).unwrap().is_empty());
    let rows = [row(&[1], &[&[4, 5]]), row(&[1, 8], &[&[4]])];
    let got = scorer.rank_rows(&rows).unwrap();
    assert_scores(&p, &rows, &got, "one-token prompt");
    assert!(scorer.rank_rows(&[row(&[], &[&[4]])]).is_err());
}

#[test]
fn batches_cover_the_rows_in_order_within_the_token_budget() {
    let m = tiny_model(TinySpec::default());
    let p = Pretrained::load(&m.path_str(), &LoadOptions::default()).unwrap();
    let rows: Vec<PromptAndAnswers> = (0..7u32)
        .map(|i| {
            let mut prompt = vec![1, 20, 21];
            prompt.extend((0..i % 3 + 1).map(|j| 30 + i + j));
            row(&prompt, &[&[7], &[9, 11, 3]])
        })
        .collect();
    for budget in [1, 10, 16, 1000] {
        let batches = tuna_eval::scoring::rank_batches(&rows, budget);
        assert_eq!(batches.concat(), rows, "budget {budget}");
        for batch in &batches {
            assert!(!batch.is_empty());
            // Computed tokens: each prompt after the batch's shared prefix, plus 2 tail
            // tokens per row.
            let shared = (batch.iter().map(|r| r.prompt.len()).min().unwrap() - 1).min(3);
            let cost: usize = batch.iter().map(|r| r.prompt.len() - shared + 2).sum();
            assert!(
                batch.len() == 1 || cost <= budget,
                "budget {budget}: {cost}"
            );
        }
        if budget == 1 {
            assert_eq!(batches.len(), rows.len());
        }
        if budget == 1000 {
            assert_eq!(batches.len(), 1);
        }
        let mut scorer = Scorer::new(&p);
        let scores: Vec<Vec<f64>> = batches
            .iter()
            .flat_map(|b| scorer.rank_rows(b).unwrap())
            .collect();
        assert_scores(&p, &rows, &scores, &format!("budget {budget}"));
    }
}
