//! The on-disk cache of compiled plugins: native code, so nothing in it runs unless this
//! host wrote it.
//!
//! - The folder must be this user's and writable by nobody else, nor may any folder above
//!   it be (unless, like `/tmp`, it has the sticky bit); otherwise `serve` refuses to start.
//! - Each entry is `<sha256 of the wasm>.cwasm`: an HMAC-SHA-256 tag, then the artifact. The
//!   tag covers the wasm's hash and the artifact, under a key derived from the master key
//!   (HKDF, [`MAC_PURPOSE`]), so an entry planted, edited, or copied from another plugin's
//!   name is refused (and the plugin compiled again, which is logged).
//! - Entries are read without following a symbolic link, and written to a fresh name opened
//!   with `O_EXCL` (`create_new`) and then renamed over the entry, which replaces a link
//!   planted there rather than writing through it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use hmac::{KeyInit, Mac};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::secrets::Keyring;

/// The HKDF `info` of the cache's MAC key.
pub const MAC_PURPOSE: &str = "ml-connector plugin cache mac v1";

const TAG_BYTES: usize = 32;

/// No artifact this host writes comes near it; a larger file is not read.
const MAX_ENTRY_BYTES: u64 = 1 << 30;

type HmacSha256 = hmac::Hmac<sha2_011::Sha256>;

/// Why the cache folder is refused. Each names the setting to change.
#[derive(Debug, Error)]
pub enum CacheDirError {
    #[error("ML_CONNECTOR_PLUGIN_CACHE_DIR {dir}: cannot create or read it: {source}")]
    Io { dir: PathBuf, source: std::io::Error },
    #[error("ML_CONNECTOR_PLUGIN_CACHE_DIR {dir} is not a directory")]
    NotADirectory { dir: PathBuf },
    #[error(
        "ML_CONNECTOR_PLUGIN_CACHE_DIR {dir} belongs to uid {owner}, not to this process (uid {us}): compiled code in it could have been put there by someone else; choose a folder of this user's own"
    )]
    NotOurs { dir: PathBuf, owner: u32, us: u32 },
    #[error(
        "ML_CONNECTOR_PLUGIN_CACHE_DIR {dir} can be written by others (mode {mode:o}): compiled code in it could have been put there by someone else; `chmod 700` it or choose another folder"
    )]
    OthersCanWrite { dir: PathBuf, mode: u32 },
    #[error(
        "ML_CONNECTOR_PLUGIN_CACHE_DIR {dir}: the folder {above} above it {why}, so someone else could swap the cache; choose a folder inside this user's own"
    )]
    UnsafeAbove { dir: PathBuf, above: PathBuf, why: String },
}

/// Why an entry was not used (the plugin is then compiled again).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum EntryRefusal {
    #[error("no entry")]
    Missing,
    #[error("cannot be read without following a link or is not a regular file: {0}")]
    Unreadable(String),
    #[error("is shorter than its tag")]
    Short,
    #[error("its MAC does not match: it was not written by this host under this master key")]
    BadMac,
}

/// The cache folder, checked, and the key its entries are authenticated with.
pub struct DiskCache {
    dir: PathBuf,
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for DiskCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskCache").field("dir", &self.dir).finish_non_exhaustive()
    }
}

/// Where compiled plugins are kept unless configured otherwise: `$XDG_CACHE_HOME/ml-connector/plugins`,
/// else `$HOME/.cache/ml-connector/plugins`; `None` (memory only) if neither is set.
pub fn default_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| Path::new(v).is_absolute())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| Path::new(&h).join(".cache"))
        })?;
    Some(base.join("ml-connector").join("plugins"))
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

impl DiskCache {
    /// Create the folder if missing (mode 700) and check it: ours, and nobody else can
    /// write to it or swap it.
    pub fn open(dir: &Path, keys: &Keyring) -> Result<Self, CacheDirError> {
        let io = |source| CacheDirError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io)?;
        // Resolved once: a link in the path cannot be re-pointed after the check.
        let real = dir.canonicalize().map_err(io)?;
        check_folder(dir, &real)?;
        Ok(DiskCache {
            dir: real,
            key: keys.derive_key(MAC_PURPOSE),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The entry of a plugin, by the SHA-256 of its wasm.
    pub fn path(&self, sha: &str) -> PathBuf {
        self.dir.join(format!("{sha}.cwasm"))
    }

    fn tag(&self, sha: &str, artifact: &[u8]) -> HmacSha256 {
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(self.key.as_slice()).expect("HMAC takes any key length");
        mac.update(b"ml-connector plugin cache entry v1\0");
        mac.update(sha.as_bytes());
        mac.update(b"\0");
        mac.update(artifact);
        mac
    }

    /// The authenticated artifact of `sha`, or why there is none to use.
    pub fn read(&self, sha: &str) -> Result<Vec<u8>, EntryRefusal> {
        let path = self.path(sha);
        let mut file = match OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(EntryRefusal::Missing),
            Err(e) => return Err(EntryRefusal::Unreadable(e.to_string())),
        };
        let meta = file.metadata().map_err(|e| EntryRefusal::Unreadable(e.to_string()))?;
        if !meta.is_file() || meta.len() > MAX_ENTRY_BYTES {
            return Err(EntryRefusal::Unreadable(format!(
                "{} bytes, not a regular file of at most 1 GiB",
                meta.len()
            )));
        }
        // Read, not mapped: a file replaced or truncated under a mapping would crash the host.
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        file.read_to_end(&mut bytes).map_err(|e| EntryRefusal::Unreadable(e.to_string()))?;
        if bytes.len() < TAG_BYTES {
            return Err(EntryRefusal::Short);
        }
        let artifact = bytes.split_off(TAG_BYTES);
        self.tag(sha, &artifact).verify_slice(&bytes).map_err(|_| EntryRefusal::BadMac)?;
        Ok(artifact)
    }

    /// Write the artifact of `sha`: to a fresh file (`O_EXCL`, mode 600), then renamed over
    /// the entry. A failure leaves the cache as it was.
    pub fn write(&self, sha: &str, artifact: &[u8]) -> std::io::Result<()> {
        let tag = self.tag(sha, artifact).finalize().into_bytes();
        let tmp = self
            .dir
            .join(format!(".{sha}.{}.{}.tmp", std::process::id(), uuid::Uuid::new_v4().simple()));
        let written = (|| {
            let mut f: File = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)?;
            f.write_all(&tag)?;
            f.write_all(artifact)?;
            f.sync_all()?;
            // rename(2) replaces whatever is at the entry's name, a link included, and
            // never writes through it.
            std::fs::rename(&tmp, self.path(sha))
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }
}

/// The folder itself: ours, writable by us alone; every folder above it: ours or root's,
/// and writable by nobody else unless sticky.
fn check_folder(dir: &Path, real: &Path) -> Result<(), CacheDirError> {
    let us = euid();
    let meta = |p: &Path| {
        std::fs::metadata(p).map_err(|source| CacheDirError::Io {
            dir: dir.to_path_buf(),
            source,
        })
    };
    let m = meta(real)?;
    if !m.is_dir() {
        return Err(CacheDirError::NotADirectory { dir: dir.to_path_buf() });
    }
    if m.uid() != us {
        return Err(CacheDirError::NotOurs {
            dir: dir.to_path_buf(),
            owner: m.uid(),
            us,
        });
    }
    if m.mode() & 0o022 != 0 {
        return Err(CacheDirError::OthersCanWrite {
            dir: dir.to_path_buf(),
            mode: m.mode() & 0o7777,
        });
    }
    for above in real.ancestors().skip(1) {
        let m = meta(above)?;
        let why = if m.uid() != us && m.uid() != 0 {
            Some(format!("belongs to uid {}", m.uid()))
        } else if m.mode() & 0o022 != 0 && m.mode() & 0o1000 == 0 {
            Some(format!("can be written by others (mode {:o}) and is not sticky", m.mode() & 0o7777))
        } else {
            None
        };
        if let Some(why) = why {
            return Err(CacheDirError::UnsafeAbove {
                dir: dir.to_path_buf(),
                above: above.to_path_buf(),
                why,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::secrets::generate_master_key;

    fn scratch(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("mlc-cache-{tag}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    fn keys() -> Keyring {
        Keyring::new(&generate_master_key(), &[]).unwrap()
    }

    #[test]
    fn an_entry_reads_back_only_under_its_own_name_and_key() {
        let dir = scratch("mac");
        let k = keys();
        let cache = DiskCache::open(&dir, &k).unwrap();
        cache.write("aa", b"artifact of a").unwrap();
        assert_eq!(cache.read("aa").unwrap(), b"artifact of a");
        assert_eq!(cache.read("bb"), Err(EntryRefusal::Missing));
        // Copied under another plugin's name: refused.
        std::fs::copy(cache.path("aa"), cache.path("bb")).unwrap();
        assert_eq!(cache.read("bb"), Err(EntryRefusal::BadMac));
        // Another master key: refused.
        let other = DiskCache::open(&dir, &keys()).unwrap();
        assert_eq!(other.read("aa"), Err(EntryRefusal::BadMac));
        // One byte changed: refused.
        let mut bytes = std::fs::read(cache.path("aa")).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        std::fs::write(cache.path("aa"), &bytes).unwrap();
        assert_eq!(cache.read("aa"), Err(EntryRefusal::BadMac));
        std::fs::write(cache.path("aa"), b"short").unwrap();
        assert_eq!(cache.read("aa"), Err(EntryRefusal::Short));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_link_at_an_entry_is_neither_read_nor_written_through() {
        let dir = scratch("link");
        let victim = dir.with_extension("victim");
        std::fs::write(&victim, b"not the cache's").unwrap();
        let cache = DiskCache::open(&dir, &keys()).unwrap();
        std::os::unix::fs::symlink(&victim, cache.path("aa")).unwrap();
        assert!(matches!(cache.read("aa"), Err(EntryRefusal::Unreadable(_))));
        cache.write("aa", b"artifact").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"not the cache's");
        assert!(std::fs::symlink_metadata(cache.path("aa")).unwrap().is_file());
        assert_eq!(cache.read("aa").unwrap(), b"artifact");
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::remove_file(&victim).unwrap();
    }

    #[test]
    fn folders_others_can_write_or_that_are_not_ours_are_refused() {
        let dir = scratch("perm");
        let new = dir.join("a/b");
        DiskCache::open(&new, &keys()).unwrap();
        assert_eq!(std::fs::metadata(&new).unwrap().mode() & 0o777, 0o700, "created 700");
        std::fs::set_permissions(&new, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = DiskCache::open(&new, &keys()).unwrap_err();
        assert!(matches!(e, CacheDirError::OthersCanWrite { .. }), "{e}");
        assert!(e.to_string().contains("ML_CONNECTOR_PLUGIN_CACHE_DIR"), "{e}");
        std::fs::set_permissions(&new, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(dir.join("a"), std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = DiskCache::open(&new, &keys()).unwrap_err();
        assert!(matches!(e, CacheDirError::UnsafeAbove { .. }), "{e}");
        std::fs::set_permissions(dir.join("a"), std::fs::Permissions::from_mode(0o755)).unwrap();
        if euid() == 0 {
            // As root, hand the folder to another user: not ours.
            std::os::unix::fs::chown(&new, Some(65534), None).unwrap();
            let e = DiskCache::open(&new, &keys()).unwrap_err();
            assert!(matches!(e, CacheDirError::NotOurs { owner: 65534, .. }), "{e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
