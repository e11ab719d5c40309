//! `tuna eval`: loss and perplexity on held-out data.

use tuna_eval::evaluate_loss;

use crate::args::EvalArgs;

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let options = args.encoding.encode_options();
    let fields = args.encoding.field_names()?;
    let model = args.model.load(args.weights)?;
    let report = evaluate_loss(
        &model,
        &args.data,
        &options,
        &fields,
        args.limit,
        args.batch_tokens,
    )?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{}: loss {:.4}  perplexity {:.3}  ({} target tokens, {} records, {} truncated, {} skipped)",
            args.data.display(),
            report.loss,
            report.perplexity,
            report.tokens,
            report.records,
            report.truncated,
            report.skipped
        );
    }
    Ok(())
}
