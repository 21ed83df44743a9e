//! Embeds the canonical ViewDefinitions (`schemas/views/*.json`) into the binary, so that
//! `fhirhose` runs them with no files around it.

use std::fmt::Write as _;

fn main() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/views");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let mut out = String::from("/// Canonical views: (file name, JSON bytes).\npub(crate) const CANONICAL_VIEWS: &[(&str, &[u8])] = &[\n");
    for p in &names {
        println!("cargo:rerun-if-changed={}", p.display());
        let file = p.file_name().unwrap().to_string_lossy();
        writeln!(
            out,
            "    ({file:?}, include_bytes!({:?})),",
            p.display().to_string()
        )
        .unwrap();
    }
    out.push_str("];\n");
    let dest = std::path::Path::new(&std::env::var("OUT_DIR").unwrap()).join("canonical_views.rs");
    std::fs::write(dest, out).unwrap();
}
