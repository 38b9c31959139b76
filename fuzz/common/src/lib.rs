//! What vbd-backend's fuzz targets and its property tests share: the inputs, mirrors of what
//! a guest or a client sends described field by field (serde-derived for the corpus,
//! `Arbitrary` for the property tests' generators); the hostile driver and client that turn
//! an input into guest memory or a byte stream and drive the backend's own parsers; the
//! checks of everything the parsers return; and the seed cases the corpus is made of.
//!
//! A check that fails panics: libFuzzer keeps the input as a crash, proptest shrinks it.

use std::fs;
use std::io;
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::Serialize;

pub mod nbd;
pub mod stream;
pub mod virtio;

/// An input as the fuzz targets read it and the seed corpus holds it.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    bincode::deserialize(bytes).ok()
}

/// Write `seeds` as `fuzz/corpus/TARGET/NAME`, one file per case, the corpus cargo-fuzz
/// starts from.
pub fn write_corpus<T: Serialize>(target: &str, seeds: &[(&str, T)]) -> io::Result<()> {
    let directory = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../corpus")
        .join(target);
    fs::create_dir_all(&directory)?;
    for (name, input) in seeds {
        let bytes = bincode::serialize(input).map_err(io::Error::other)?;
        fs::write(directory.join(name), bytes)?;
    }
    Ok(())
}

/// An input made from any bytes, the way the property tests generate them: every byte
/// string is some input, so no case is wasted.
pub fn from_any_bytes<T: for<'a> arbitrary::Arbitrary<'a>>(bytes: &[u8]) -> Option<T> {
    T::arbitrary_take_rest(arbitrary::Unstructured::new(bytes)).ok()
}

/// A part of an input that is as it should be seven times in eight (`None`), and otherwise
/// the hostile value. Generated inputs so stay mostly valid and reach the deep paths, while
/// every field can still be wrong.
#[derive(Serialize, serde::Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mostly<T>(pub Option<T>);

impl<'a, T: arbitrary::Arbitrary<'a>> arbitrary::Arbitrary<'a> for Mostly<T> {
    fn arbitrary(bytes: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Mostly<T>> {
        Ok(Mostly(if bytes.ratio(1u8, 8u8)? {
            Some(T::arbitrary(bytes)?)
        } else {
            None
        }))
    }
}
