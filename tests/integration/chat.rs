//! `tuna chat` through a pipe: turns in on stdin, answers out on stdout, one per line; with
//! --compare the base and the tuned model answer each turn.

use tuna_testkit::{tiny_model, TinySpec};

use crate::util::{tuna, tuna_with_input, write_parity};

#[test]
fn two_turns_through_a_pipe_compared_and_reset() {
    let m = tiny_model(TinySpec::default());
    let model = m.path_str();
    let data = m.path().join("train.jsonl");
    write_parity(&data, 0..12);
    let run_dir = m.path().join("run");
    let r = tuna(
        &[
            "train",
            "--model",
            &model,
            "--data",
            data.to_str().unwrap(),
            "--output",
            run_dir.to_str().unwrap(),
            "--max-steps",
            "2",
            "--lora-r",
            "2",
            "--lr",
            "0.05",
            "--quiet",
        ],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let sampling = ["--max-new-tokens", "4", "--weights", "f32"];

    // The first turn of a chat is what generate --chat answers to the same prompt.
    let mut args = vec![
        "generate",
        "--model",
        &model,
        "--chat",
        "--prompt",
        "is 3 even",
    ];
    args.extend_from_slice(&sampling);
    let single = tuna(&args, &[]);
    assert_eq!(single.code, 0, "{}", single.stderr);

    let mut args = vec![
        "chat",
        "--model",
        &model,
        "--adapter",
        run_dir.to_str().unwrap(),
        "--compare",
    ];
    args.extend_from_slice(&sampling);
    let r = tuna_with_input(
        &args,
        "is 3 even\n/system Answer yes or no.\nis 4 even\n/quit\nnot read\n",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    // Answers may hold newlines: the labels mark where each begins.
    let first = format!("base: {}", single.stdout);
    let rest = r
        .stdout
        .strip_prefix(&first)
        .unwrap_or_else(|| panic!("{:?} does not start with {first:?}", r.stdout));
    let tuned_at = rest.find("tuned: ");
    let base_again = rest.find("\nbase: ");
    let tuned_again = rest.rfind("\ntuned: ");
    assert!(
        tuned_at == Some(0) && base_again.is_some() && tuned_again > base_again,
        "{:?}",
        r.stdout
    );
    assert_eq!(r.stderr, "(system message set; conversation cleared)\n");

    // /reset forgets the conversation: the same turn after it gets the first answer again.
    let mut args = vec!["chat", "--model", &model];
    args.extend_from_slice(&sampling);
    let r = tuna_with_input(&args, "is 3 even\n/reset\nis 3 even\n");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, format!("{}{}", single.stdout, single.stdout));

    // --compare needs an adapter.
    let r = tuna_with_input(&["chat", "--model", &model, "--compare"], "hi\n");
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stderr,
        "error: --compare: answers every turn with the base and the tuned model; pass --adapter RUN (a run directory of tuna train or an adapter)\n"
    );
}
