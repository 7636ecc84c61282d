//! The drills' files in the receiver's state directory: one lock for all
//! drills of the node (so that a drill never takes another's clone for a
//! leftover) and one record per copy, `drill/<dataset with '@' for
//! '/'>.json`, written atomically.

use anyhow::Context;
use fjord_dr::drill::record::{file_name, DrillRecord};
use std::fs::File;
use std::path::{Path, PathBuf};

/// The directory of the records.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("drill")
}

/// The lock every drill holds while it runs; `Ok(None)` when another
/// drill holds it.
pub fn lock(state_dir: &Path) -> anyhow::Result<Option<File>> {
    let d = dir(state_dir);
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    let path = d.join("drill.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

/// The last drill of `dataset`, if one was recorded and is readable.
pub fn read(state_dir: &Path, dataset: &str) -> anyhow::Result<Option<DrillRecord>> {
    let path = dir(state_dir).join(file_name(dataset));
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let record: DrillRecord =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    Ok(Some(record).filter(|r| r.dataset == dataset))
}

/// Records `record` as its copy's last drill.
pub fn write(state_dir: &Path, record: &DrillRecord) -> anyhow::Result<PathBuf> {
    let path = dir(state_dir).join(file_name(&record.dataset));
    let json = serde_json::to_string_pretty(record).context("encoding the drill record")?;
    fjord_config::textfile::write_atomic(&path, format!("{json}\n").as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
