//! The raw state splice against the decoded reference it replaced.

use mongodb::bson::{doc, Bson, Document};

use super::{encode, set_state};
use crate::store::model::{decode_player, to_bson, to_document, PlayerProfile, PlayerState};

fn state(x: f32) -> PlayerState {
    PlayerState {
        map: "meadow".into(),
        x,
        y: 7.5,
        facing: 1.25,
        ..PlayerState::default()
    }
}

fn stored(rev: Bson) -> Document {
    let mut profile = PlayerProfile::new("ada", "Ada");
    profile.inventory.currency = 250;
    profile.inventory.items.insert("potion".into(), 3);
    profile.state = state(1.0);
    let mut d = to_document(&profile);
    d.insert("state_rev", rev);
    d.insert("extra", doc! { "kept": true });
    d
}

/// What the decoded path wrote: the document with `state` and `state_rev`
/// set, every other field as it was.
fn reference(mut d: Document, s: &PlayerState, rev: u64) -> Document {
    d.insert("state", to_bson(s));
    d.insert("state_rev", Bson::Int64(rev as i64));
    d
}

#[test]
fn a_newer_state_replaces_only_the_state_and_its_revision() {
    for rev in [
        Bson::Int64(10),
        Bson::Int32(10),
        Bson::String("junk".into()),
    ] {
        let before = stored(rev);
        let bytes = set_state(&encode(&before), &state(42.0), 11)
            .unwrap()
            .expect("a newer revision is written");
        let after = Document::from_reader(&mut bytes.as_slice()).unwrap();
        // Same fields and values; only the order of the two set ones moves.
        let want = reference(before, &state(42.0), 11);
        assert_eq!(after.len(), want.len());
        for (key, value) in &want {
            assert_eq!(after.get(key), Some(value), "field {key}");
        }
        let (profile, _) = decode_player(after).unwrap();
        assert_eq!((profile.state.x, profile.state_rev), (42.0, 11));
        assert_eq!(profile.inventory.currency, 250);
        assert_eq!(profile.inventory.items.get("potion"), Some(&3));
    }
}

#[test]
fn an_equal_or_older_revision_is_not_written() {
    let before = encode(&stored(Bson::Int64(10)));
    assert_eq!(set_state(&before, &state(42.0), 10), Ok(None));
    assert_eq!(set_state(&before, &state(42.0), 9), Ok(None));
    // A negative stored revision reads as none, as in Mongo's filter.
    let negative = encode(&stored(Bson::Int64(-1)));
    assert!(set_state(&negative, &state(42.0), 1).unwrap().is_some());
}

#[test]
fn bytes_that_are_not_bson_are_an_error_not_a_panic() {
    let good = encode(&stored(Bson::Int64(1)));
    for bad in [
        Vec::new(),
        vec![1, 2, 3],
        good[..good.len() - 3].to_vec(),
        {
            let mut b = good.clone();
            b[4] = 0x7f; // an element type that does not exist
            b
        },
    ] {
        let err = set_state(&bad, &state(1.0), 2).unwrap_err();
        assert!(err.starts_with("not a BSON document"), "{err}");
    }
}
