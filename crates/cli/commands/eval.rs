//! `tuna eval`: loss and perplexity on held-out text.

use tuna_eval::evaluate_text_loss;

use crate::args::EvalArgs;

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let model = args.model.load(args.weights)?;
    let report = evaluate_text_loss(
        &model,
        &args.data,
        args.seq_len,
        args.limit,
        args.batch_tokens,
    )?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{}: loss {:.4}  perplexity {:.3}  ({} tokens, {} records)",
            args.data.display(),
            report.loss,
            report.perplexity,
            report.tokens,
            report.records
        );
    }
    Ok(())
}
