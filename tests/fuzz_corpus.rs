//! Every committed fuzz corpus file (`fuzz/seeds/TARGET/`, seeds and the inputs of crashes
//! once found) fed to the same entry point the libFuzzer target uses: a plain, fast test on
//! stable Rust, so each fixed crash stays fixed without nightly or cargo-fuzz.

use std::path::Path;

#[test]
fn every_corpus_file_passes_its_fuzz_entry_point() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let mut fed = 0;
    for (target, entry) in promptgate::fuzz::TARGETS {
        let dir = root.join(target);
        let files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        assert!(!files.is_empty(), "no seeds for fuzz target `{target}`");
        for file in files {
            let data = std::fs::read(&file).unwrap();
            let name = file.display().to_string();
            let outcome = std::panic::catch_unwind(|| entry(&data));
            assert!(outcome.is_ok(), "fuzz target `{target}` fails on {name}");
            fed += 1;
        }
    }
    assert!(fed >= promptgate::fuzz::TARGETS.len());
}

#[test]
fn every_fuzz_target_has_a_libfuzzer_wrapper() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    for (target, _) in promptgate::fuzz::TARGETS {
        let wrapper = std::fs::read_to_string(root.join(format!("fuzz_targets/{target}.rs")))
            .unwrap_or_else(|e| panic!("fuzz/fuzz_targets/{target}.rs: {e}"));
        assert!(
            wrapper.contains(&format!("promptgate::fuzz::{target}(")),
            "fuzz/fuzz_targets/{target}.rs does not call promptgate::fuzz::{target}"
        );
        assert!(
            manifest.contains(&format!("name = \"{target}\"")),
            "{target} not in fuzz/Cargo.toml"
        );
    }
}
