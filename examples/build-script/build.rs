//! Compiles the YAML spec to `$OUT_DIR/densenet_bc100_k12.rs` at build time.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    densenet_spec::Config::new().compile(&["../../specs/densenet_bc100_k12.yaml"])?;
    Ok(())
}
