//! Writes the synthetic shapes image folder (`tools/shapes.rs`): four classes of
//! coloured shapes, for trying `densenet train` and the fine-tuning example offline.
//!
//! ```sh
//! cargo run --example make_image_folder -- OUT_DIR [PER_CLASS=50] [SIZE=32] [SEED=0]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

#[path = "shapes.rs"]
mod shapes;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: make_image_folder OUT_DIR [PER_CLASS=50] [SIZE=32] [SEED=0]";
    let Some(out) = args.first().map(PathBuf::from) else {
        eprintln!("{usage}");
        return ExitCode::FAILURE;
    };
    let number = |i: usize, default: u64| match args.get(i) {
        None => Ok(default),
        Some(v) => v
            .parse::<u64>()
            .map_err(|e| format!("argument {i} ({v:?}): {e}\n{usage}")),
    };
    let parsed = (|| Ok::<_, String>((number(1, 50)?, number(2, 32)?, number(3, 0)?)))();
    let (per_class, size, seed) = match parsed {
        Ok(v) => v,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let Ok(size) = u32::try_from(size) else {
        eprintln!("SIZE {size} is too large\n{usage}");
        return ExitCode::FAILURE;
    };
    match shapes::write_shapes_folder(&out, per_class as usize, size, seed) {
        Ok(files) => {
            println!(
                "wrote {} images ({} classes: {}) to {}",
                files.len(),
                shapes::CLASSES.len(),
                shapes::CLASSES.join(", "),
                out.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {e}", out.display());
            ExitCode::FAILURE
        }
    }
}
