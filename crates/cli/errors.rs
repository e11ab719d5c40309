//! How a failed command is reported: `error: ...` naming the file/field, then `hint: ...`
//! when the error knows what to do about it; the exit code is 1.

use tuna_data::DataError;
use tuna_eval::EvalError;
use tuna_model::ModelError;

fn hint_of(err: &anyhow::Error) -> Option<String> {
    err.chain().find_map(|cause| {
        if let Some(e) = cause.downcast_ref::<EvalError>() {
            e.hint()
        } else if let Some(e) = cause.downcast_ref::<ModelError>() {
            e.hint()
        } else if let Some(e) = cause.downcast_ref::<DataError>() {
            e.hint()
        } else if let Some(e) = cause.downcast_ref::<tuna_train::TrainError>() {
            e.hint()
        } else if let Some(e) = cause.downcast_ref::<tuna_lora::LoraError>() {
            e.hint()
        } else {
            None
        }
    })
}

/// Prints the error chain and hint to stderr; returns the exit code.
pub fn report(err: &anyhow::Error) -> i32 {
    let mut message = err.to_string();
    for cause in err.chain().skip(1) {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
    }
    eprintln!("error: {message}");
    if let Some(hint) = hint_of(err) {
        eprintln!("hint: {hint}");
    }
    // 130: ended by Ctrl-C (after writing a checkpoint), as shells report SIGINT.
    let interrupted = err.chain().any(|c| {
        matches!(
            c.downcast_ref::<tuna_train::TrainError>(),
            Some(tuna_train::TrainError::Interrupted { .. })
        )
    });
    if interrupted {
        130
    } else {
        1
    }
}
