//! Shared helpers for fjord's end-to-end tests and benchmarks: where the
//! OpenZFS stream corpus lives and how to read it.
//!
//! The corpus (`shared/testdata/openzfs-streams/`, real streams written by
//! OpenZFS kernels) sits beside the repository and is never copied into it.
//! `FJORD_CORPUS_DIR` overrides the location. A missing corpus is an error,
//! not a skip: tests that claim to run on real streams must.

use std::io::Read;
use std::path::PathBuf;

/// The stream OpenZFS must reject (and so must we).
pub const BAD_STREAM: &str = "undersized-write-lsize";

/// The corpus directory.
///
/// # Panics
/// When the directory does not exist, with a message saying where it was
/// looked for and how to point at it.
pub fn corpus_dir() -> PathBuf {
    let dir = std::env::var_os("FJORD_CORPUS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata/openzfs-streams")
        });
    assert!(
        dir.is_dir(),
        "OpenZFS stream corpus not found at {}: clone fjord beside shared/ or set FJORD_CORPUS_DIR",
        dir.display()
    );
    dir
}

/// A corpus stream, decompressed.
pub struct CorpusStream {
    /// File name without `.zsend.bz2`.
    pub name: String,
    /// The raw send stream.
    pub bytes: Vec<u8>,
}

/// Every stream in the corpus, decompressed, sorted by name.
///
/// # Panics
/// When the corpus is missing or a file cannot be decompressed.
pub fn corpus() -> Vec<CorpusStream> {
    let mut entries: Vec<_> = std::fs::read_dir(corpus_dir())
        .expect("corpus directory is readable")
        .map(|e| e.expect("corpus entry is readable").path())
        .filter(|p| p.to_string_lossy().ends_with(".zsend.bz2"))
        .collect();
    entries.sort();
    assert!(!entries.is_empty(), "no .zsend.bz2 files in the corpus");
    entries
        .into_iter()
        .map(|path| {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".zsend.bz2"))
                .expect("corpus file name is UTF-8")
                .to_string();
            let mut bytes = Vec::new();
            bzip2::read::BzDecoder::new(std::fs::File::open(&path).expect("corpus file opens"))
                .read_to_end(&mut bytes)
                .unwrap_or_else(|e| panic!("{}: bzip2: {e}", path.display()));
            CorpusStream { name, bytes }
        })
        .collect()
}

/// The valid corpus streams (all but [`BAD_STREAM`]).
pub fn valid_corpus() -> Vec<CorpusStream> {
    corpus()
        .into_iter()
        .filter(|s| s.name != BAD_STREAM)
        .collect()
}

/// A deterministic pseudo-random generator (xorshift), for reproducible
/// cut points and chunk sizes without a dependency.
pub struct XorShift(pub u64);

impl XorShift {
    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A value in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }
}

/// A stream the lab's OpenZFS wrote, from `tests/fixtures/lab-streams/`.
///
/// # Panics
/// When the fixture is missing.
pub fn lab_fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/lab-streams")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every lab fixture stream, by file name.
pub fn lab_fixtures() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lab-streams");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".zsend"))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|n| (n.clone(), lab_fixture(&n)))
        .collect()
}
