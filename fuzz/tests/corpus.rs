//! Every committed corpus input passes its target, and a short,
//! deterministic fuzzing session of each target finds nothing. (The CI
//! smoke run, `tessera-fuzz all`, goes on from here with a fresh seed.)

use std::path::Path;

use tessera_fuzz::{check, Fuzzer, Target};

fn corpus(target: Target) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target.name());
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect()
}

#[test]
fn every_corpus_input_passes_its_target() {
    for target in Target::ALL {
        let inputs = corpus(target);
        assert!(inputs.len() >= 5, "{}: corpus too small", target.name());
        for (name, input) in inputs {
            if let Err(crash) = check(target, &input) {
                panic!("{name}: {}", crash.message);
            }
        }
    }
}

#[test]
fn the_seeds_reach_the_deep_paths() {
    // The golden frames decode; a signed claims payload authenticates and
    // a resume payload resumes; the admin samples parse.
    let ok = |target: Target, file: &str| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("corpus")
            .join(target.name())
            .join(file);
        target.run(&std::fs::read(path).unwrap())
    };
    assert_eq!(ok(Target::ClientDecoder, "client_move.bin"), "ok:move");
    assert!(ok(Target::HelloToken, "claims.json").contains("ok;"));
    assert!(ok(Target::HelloToken, "resume_claims.json").contains("resume;"));
    assert!(ok(Target::HelloToken, "expired_claims.json").contains("AuthExpired"));
    // A tick decodes as an owner message and lays out both its views; two
    // frames in a row are both followed; an oversized length stops there.
    assert_eq!(ok(Target::PeerFrame, "peer_room_tick.bin"), "---o++");
    assert_eq!(ok(Target::PeerFrame, "two_frames.bin"), "c--- c---");
    assert!(ok(Target::PeerFrame, "oversized.bin").starts_with("frame:TooLarge"));
    // A kick body ignores fields it does not know, like every admin body.
    assert_eq!(
        ok(Target::AdminJson, "room_stall.json"),
        "announce:err room:ok session:err kick:ok ban:err"
    );
    assert!(ok(Target::AdminJson, "ban.json").ends_with("kick:ok ban:ok"));
}

#[test]
fn a_short_session_of_each_target_finds_nothing() {
    for target in Target::ALL {
        let seeds = corpus(target).into_iter().map(|(_, b)| b).collect();
        let mut fuzzer = Fuzzer::new(target, seeds, 0x7e55e7a).unwrap();
        for _ in 0..5_000 {
            if let Err(crash) = fuzzer.step() {
                panic!(
                    "{}: {} on {:02x?}",
                    target.name(),
                    crash.message,
                    crash.input
                );
            }
        }
        assert!(
            fuzzer.outcomes() > 3,
            "{}: the mutator explores",
            target.name()
        );
    }
}

#[test]
fn every_peer_golden_vector_seeds_the_peer_frame_target() {
    // The wire's examples are where the decoders' deep paths start: a
    // golden vector that changed or was added must reach the corpus too
    // (`xxd -r -p` each `protocol/tests/golden/peer_*.hex` into
    // `corpus/peer_frame/<name>.bin`).
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../protocol/tests/golden");
    let seeds: std::collections::HashMap<String, Vec<u8>> = corpus(Target::PeerFrame)
        .into_iter()
        .map(|(path, bytes)| (path.rsplit('/').next().unwrap().to_string(), bytes))
        .collect();
    let mut checked = 0;
    for entry in std::fs::read_dir(&golden).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let Some(stem) = name.strip_prefix("peer_").and(name.strip_suffix(".hex")) else {
            continue;
        };
        let text = std::fs::read_to_string(&path).unwrap();
        let text = text.trim();
        let bytes: Vec<u8> = (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect();
        assert_eq!(
            seeds.get(&format!("{stem}.bin")),
            Some(&bytes),
            "corpus/peer_frame/{stem}.bin is not golden/{name}"
        );
        checked += 1;
    }
    assert!(checked >= 30, "only {checked} peer golden vectors found");
}
