//! The one libzfs_core call the `zfs` command has no word for:
//! `lzc_change_key(DATASET, DCP_CMD_FORCE_INHERIT)`, which makes an
//! encrypted dataset that is its own encryption root inherit its
//! parent's, without rewrapping its key and so without any key loaded.
//! `zfs recv` of a `zfs send -R -w` package does exactly this after its
//! receives (`recv_fix_encryption_hierarchy` in OpenZFS's
//! `lib/libzfs/libzfs_sendrecv.c`); `zfs change-key -i` cannot stand in,
//! as it rewraps and needs both keys loaded (`spa_keystore_change_key_check`
//! in `module/zfs/dsl_crypt.c` checks the wrapping keys only for
//! `DCP_CMD_INHERIT`). The library is opened at the call, not linked: a
//! DR node without raw trees never needs it.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use thiserror::Error;

/// `dcp_cmd_t` in OpenZFS's `include/sys/fs/zfs.h`: NONE, RAW_RECV,
/// NEW_KEY, INHERIT, FORCE_NEW_KEY, FORCE_INHERIT.
const DCP_CMD_FORCE_INHERIT: u64 = 5;

/// Sonames to try, newest first (OpenZFS 2.x ships `libzfs_core.so.3`).
const LIBRARIES: &[&CStr] = &[c"libzfs_core.so.3", c"libzfs_core.so"];

type InitFn = unsafe extern "C" fn() -> c_int;
type FiniFn = unsafe extern "C" fn();
type ChangeKeyFn = unsafe extern "C" fn(*const c_char, u64, *mut c_void, *mut u8, c_uint) -> c_int;

/// Why the forced inheritance did not happen.
#[derive(Debug, Error)]
pub enum LzcError {
    /// libzfs_core could not be opened, or lacks a symbol.
    #[error("libzfs_core is not available: {0} (it comes with OpenZFS's zfsutils)")]
    Unavailable(String),
    /// `libzfs_core_init` failed (no `/dev/zfs`?).
    #[error("libzfs_core_init failed: {0}")]
    Init(std::io::Error),
    /// The kernel refused the change.
    #[error("lzc_change_key({dataset}, force inherit) failed: {cause}")]
    ChangeKey {
        /// The dataset.
        dataset: String,
        /// The errno.
        cause: std::io::Error,
    },
    /// The name cannot be passed to C.
    #[error("dataset name {0:?} contains a NUL byte")]
    BadName(String),
}

/// A `dlopen` handle, closed on drop.
struct Library(*mut c_void);

impl Library {
    fn open() -> Result<Library, LzcError> {
        for name in LIBRARIES {
            // SAFETY: a NUL-terminated name; the handle is checked and
            // closed by Drop.
            let h = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
            if !h.is_null() {
                return Ok(Library(h));
            }
        }
        Err(LzcError::Unavailable(format!(
            "dlopen of {} failed",
            LIBRARIES
                .iter()
                .map(|l| l.to_string_lossy())
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }

    /// The address of `symbol`, never null.
    fn symbol(&self, symbol: &CStr) -> Result<*mut c_void, LzcError> {
        // SAFETY: a live handle and a NUL-terminated name.
        let p = unsafe { libc::dlsym(self.0, symbol.as_ptr()) };
        if p.is_null() {
            return Err(LzcError::Unavailable(format!(
                "no symbol {}",
                symbol.to_string_lossy()
            )));
        }
        Ok(p)
    }
}

impl Drop for Library {
    fn drop(&mut self) {
        // SAFETY: the handle came from dlopen and is closed once.
        unsafe { libc::dlclose(self.0) };
    }
}

/// `lzc_change_key(dataset, DCP_CMD_FORCE_INHERIT, NULL, NULL, 0)`.
/// Blocking (an ioctl on `/dev/zfs`): call it off the async workers.
pub fn force_inherit_key(dataset: &str) -> Result<(), LzcError> {
    let name = CString::new(dataset).map_err(|_| LzcError::BadName(dataset.into()))?;
    let lib = Library::open()?;
    let (init, fini, change) = (
        lib.symbol(c"libzfs_core_init")?,
        lib.symbol(c"libzfs_core_fini")?,
        lib.symbol(c"lzc_change_key")?,
    );
    // SAFETY: the symbols have these C signatures in every OpenZFS 2.x
    // (`include/libzfs_core.h`); each pointer is non-null, the library
    // stays open (`lib`) until after the calls, and init is paired with
    // fini. NULL props and key data are what the command takes for
    // FORCE_INHERIT (`spa_keystore_change_key_check` refuses others).
    unsafe {
        let init: InitFn = std::mem::transmute::<*mut c_void, InitFn>(init);
        let fini: FiniFn = std::mem::transmute::<*mut c_void, FiniFn>(fini);
        let change: ChangeKeyFn = std::mem::transmute::<*mut c_void, ChangeKeyFn>(change);
        let rc = init();
        if rc != 0 {
            return Err(LzcError::Init(std::io::Error::from_raw_os_error(rc)));
        }
        let rc = change(
            name.as_ptr(),
            DCP_CMD_FORCE_INHERIT,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        );
        fini();
        if rc != 0 {
            return Err(LzcError::ChangeKey {
                dataset: dataset.into(),
                cause: std::io::Error::from_raw_os_error(rc),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_name_with_a_nul_byte_is_refused_before_any_library_is_opened() {
        let e = super::force_inherit_key("dst/a\0b").unwrap_err();
        assert!(matches!(e, super::LzcError::BadName(_)), "{e}");
    }
}
