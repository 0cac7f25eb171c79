//! Golden files: the bytes each release persists and sends, kept in
//! `control-plane/tests/golden/<release>/`, so every later build is tested to read them.
//!
//! Per release, one module builds in code the values its files hold and checks, file by
//! file, that this build decodes the file to exactly that value (through the same code
//! a voter runs: `decode_request`, `State::from_snapshot_bytes`, `Members::load`, the
//! transport's batch decoder, `SledStore::open`), and that where this build still writes
//! the format it writes exactly the file's bytes.
//!
//! The files of the current release are written once:
//! `FERRY_GOLDEN_WRITE=1 cargo test -p ferry-control-plane golden` creates the ones that
//! are missing and never touches one that exists. A released directory never changes: a
//! test that fails here means this build reads or writes a format differently from the
//! release that wrote it, which a rolling upgrade would meet on disk or on the wire.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

mod release_0_1_0;
mod release_0_2_0;

/// The environment variable that lets the tests create missing golden files.
const WRITE_ENV: &str = "FERRY_GOLDEN_WRITE";

/// The golden files of one release.
struct Golden {
    release: &'static str,
    dir: PathBuf,
}

impl Golden {
    fn of(release: &'static str) -> Golden {
        Golden { release, dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(release) }
    }

    /// Whether missing files may be created: only for the release being built, and only
    /// when asked.
    fn writable(&self) -> bool {
        self.release == env!("CARGO_PKG_VERSION") && std::env::var(WRITE_ENV).is_ok_and(|v| v == "1")
    }

    /// The golden file `name`; `now` is what this build encodes for the same value. A
    /// missing file of the current release is created from `now` with FERRY_GOLDEN_WRITE=1.
    fn read(&self, name: &str, now: &[u8]) -> Vec<u8> {
        let path = self.dir.join(name);
        match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.writable() => {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, now).unwrap();
                eprintln!("wrote golden file {}", path.display());
                now.to_vec()
            }
            Err(e) => panic!(
                "golden file {}: {e} (the current release's files are created once with \
                 {WRITE_ENV}=1 cargo test -p ferry-control-plane golden)",
                path.display()
            ),
        }
    }

    /// Reads `name` and asserts that this build encodes the same value to the same bytes.
    fn read_same(&self, name: &str, now: &[u8]) -> Vec<u8> {
        let golden = self.read(name, now);
        assert_same_bytes(self.release, name, &golden, now);
        golden
    }

    /// Every file under the release's directory, as `/`-separated relative paths.
    fn files(&self) -> BTreeSet<String> {
        fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
            let Ok(entries) = std::fs::read_dir(dir) else { return };
            for entry in entries {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(root, &path, out);
                } else {
                    let relative = path.strip_prefix(root).unwrap();
                    let parts: Vec<String> =
                        relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
                    out.insert(parts.join("/"));
                }
            }
        }
        let mut out = BTreeSet::new();
        walk(&self.dir, &self.dir, &mut out);
        out
    }
}

/// Fails with where the bytes first differ (a golden file is never rewritten to match).
fn assert_same_bytes(release: &str, name: &str, golden: &[u8], now: &[u8]) {
    if golden == now {
        return;
    }
    let at = golden.iter().zip(now).position(|(a, b)| a != b).unwrap_or(golden.len().min(now.len()));
    let around = |bytes: &[u8]| {
        let from = at.saturating_sub(8);
        let to = (at + 24).min(bytes.len());
        bytes.get(from..to).map(hex::encode).unwrap_or_default()
    };
    panic!(
        "this build encodes the value of golden file {release}/{name} differently: {} bytes now, {} in \
         the file, first difference at byte {at} (file …{}…, now …{}…). A released golden file never \
         changes: keep writing the released format, or version the new one.",
        now.len(),
        golden.len(),
        around(golden),
        around(now),
    );
}
