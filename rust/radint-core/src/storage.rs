//! [`Storage`]: a map array held in memory, or read in place from a file mapped into memory.
//!
//! Why: a map cache holds a Pilatus 2M map's 65 MB of entries. Copying them out of the file cost
//! ~25 ms in every fresh process (a batch run, a stream server's start, each batch worker) and a
//! private copy per worker process. Mapped, the arrays are the page cache's pages, which every
//! process sharing the file shares and none has to zero or copy.

use std::fmt;
use std::fs::File;
use std::marker::PhantomData;
use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;

use crate::error::{Error, Result};

/// Element types any bit pattern of which is a valid value, so a file's bytes may be read as
/// them in place.
pub trait Plain: Copy + Send + Sync + 'static {}
impl Plain for u8 {}
impl Plain for u32 {}
impl Plain for u64 {}
impl Plain for f32 {}
impl Plain for f64 {}

/// A file mapped read-only into memory, shared by the [`Storage`]s that read from it.
pub struct MappedFile {
    map: Mmap,
    path: String,
}

impl MappedFile {
    /// Maps `path` read-only.
    ///
    /// The file must not be changed in place while mapped: radint writes its caches to a
    /// temporary file and renames it over the old one, which leaves a mapped file's pages as
    /// they were.
    pub fn open(path: &Path) -> Result<Arc<Self>> {
        let shown = path.display().to_string();
        let file = File::open(path).map_err(|e| Error::io(shown.clone(), e))?;
        // SAFETY: read-only mapping of a file radint only ever replaces by rename (see above);
        // the bytes are only ever read as `Plain` values, any pattern of which is valid.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(shown.clone(), e))?;
        Ok(Arc::new(Self { map, path: shown }))
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn path(&self) -> &str {
        &self.path
    }
}

/// An array of `T` either owned (a `Vec`) or read in place from a [`MappedFile`].
/// It dereferences to `[T]`; [`Storage::to_mut`] copies a mapped array before changing it.
pub struct Storage<T: Plain> {
    /// The values, where `mapped` is None.
    owned: Vec<T>,
    mapped: Option<Mapped<T>>,
}

/// `len` values of `T` at byte `offset` of `file` (checked in bounds and aligned).
struct Mapped<T> {
    file: Arc<MappedFile>,
    offset: usize,
    len: usize,
    _element: PhantomData<T>,
}

impl<T> Clone for Mapped<T> {
    fn clone(&self) -> Self {
        Mapped {
            file: Arc::clone(&self.file),
            offset: self.offset,
            len: self.len,
            _element: PhantomData,
        }
    }
}

impl<T: Plain> Storage<T> {
    /// `len` values of `T` at byte `offset` of `file`; refused (not read) where they would run
    /// past the end of the file or are not aligned for `T`.
    pub fn mapped(file: &Arc<MappedFile>, offset: usize, len: usize, what: &str) -> Result<Self> {
        let size = std::mem::size_of::<T>();
        let end = len
            .checked_mul(size)
            .and_then(|bytes| bytes.checked_add(offset));
        if end.is_none_or(|end| end > file.len()) {
            return Err(Error::format(
                &file.path,
                format!(
                    "{what}: {len} values of {size} bytes at byte {offset} run past the end of \
                     the file ({} bytes)",
                    file.len()
                ),
            ));
        }
        let address = file.map.as_ptr() as usize + offset;
        if !address.is_multiple_of(std::mem::align_of::<T>()) {
            return Err(Error::format(
                &file.path,
                format!(
                    "{what}: data at byte {offset} is not aligned to {} bytes",
                    std::mem::align_of::<T>()
                ),
            ));
        }
        Ok(Self {
            owned: Vec::new(),
            mapped: Some(Mapped {
                file: Arc::clone(file),
                offset,
                len,
                _element: PhantomData,
            }),
        })
    }

    /// Whether the values are read in place from a mapped file.
    pub fn is_mapped(&self) -> bool {
        self.mapped.is_some()
    }

    /// The values as a `Vec` to change, copied out of the file first where they are mapped.
    pub fn to_mut(&mut self) -> &mut Vec<T> {
        if self.mapped.is_some() {
            self.owned = self.to_vec();
            self.mapped = None;
        }
        &mut self.owned
    }
}

impl<T: Plain> Deref for Storage<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        match &self.mapped {
            None => &self.owned,
            // SAFETY: `mapped` checked that the range lies inside the mapping and is aligned
            // for T; the mapping lives as long as `file`, which `self` holds; `T: Plain`.
            Some(m) => unsafe {
                std::slice::from_raw_parts(m.file.map.as_ptr().add(m.offset).cast::<T>(), m.len)
            },
        }
    }
}

impl<T: Plain> From<Vec<T>> for Storage<T> {
    fn from(values: Vec<T>) -> Self {
        Self {
            owned: values,
            mapped: None,
        }
    }
}

impl<T: Plain> FromIterator<T> for Storage<T> {
    fn from_iter<I: IntoIterator<Item = T>>(values: I) -> Self {
        Vec::from_iter(values).into()
    }
}

impl<T: Plain> Default for Storage<T> {
    fn default() -> Self {
        Vec::new().into()
    }
}

impl<T: Plain> Clone for Storage<T> {
    fn clone(&self) -> Self {
        Self {
            owned: self.owned.clone(),
            mapped: self.mapped.clone(),
        }
    }
}

impl<T: Plain + PartialEq> PartialEq for Storage<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<T: Plain + PartialEq> PartialEq<Vec<T>> for Storage<T> {
    fn eq(&self, other: &Vec<T>) -> bool {
        **self == **other
    }
}

impl<T: Plain + fmt::Debug> fmt::Debug for Storage<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.mapped {
            None => self.owned.fmt(f),
            Some(m) => write!(
                f,
                "<{} values at byte {} of {}>",
                m.len, m.offset, m.file.path
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(bytes: &[u8]) -> (tempfile_path::TempPath, Arc<MappedFile>) {
        let path = tempfile_path::TempPath::new(bytes);
        let file = MappedFile::open(path.as_ref()).unwrap();
        (path, file)
    }

    mod tempfile_path {
        use std::path::{Path, PathBuf};

        /// A file removed when dropped (no tempfile crate for one test).
        pub struct TempPath(PathBuf);

        impl TempPath {
            pub fn new(bytes: &[u8]) -> Self {
                use std::sync::atomic::{AtomicUsize, Ordering};
                static COUNT: AtomicUsize = AtomicUsize::new(0);
                let path = std::env::temp_dir().join(format!(
                    "radint-storage-{}-{}",
                    std::process::id(),
                    COUNT.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::write(&path, bytes).unwrap();
                Self(path)
            }
        }

        impl AsRef<Path> for TempPath {
            fn as_ref(&self) -> &Path {
                &self.0
            }
        }

        impl Drop for TempPath {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn mapped_values_read_as_the_file_holds_them() {
        let values: Vec<u32> = (0..100).map(|i| i * 7 + 1).collect();
        let mut bytes = vec![0u8; 64];
        bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        let (_path, file) = file_with(&bytes);
        let stored = Storage::<u32>::mapped(&file, 64, values.len(), "pixel").unwrap();
        assert!(stored.is_mapped());
        assert_eq!(&*stored, &values[..]);
        assert_eq!(stored.clone(), values);
    }

    #[test]
    fn changing_a_mapped_array_changes_a_copy() {
        let mut bytes = vec![0u8; 16];
        bytes.extend(2.5f64.to_le_bytes());
        let (_path, file) = file_with(&bytes);
        let mut stored = Storage::<f64>::mapped(&file, 16, 1, "weight").unwrap();
        let shared = stored.clone();
        stored.to_mut().push(1.0);
        assert!(!stored.is_mapped());
        assert_eq!(*stored, vec![2.5, 1.0]);
        assert_eq!(&*shared, &[2.5]);
    }

    #[test]
    fn ranges_past_the_end_or_misaligned_are_refused() {
        let (_path, file) = file_with(&[0u8; 64]);
        let past = Storage::<u64>::mapped(&file, 32, 5, "indptr").unwrap_err();
        assert!(past.to_string().contains("run past the end"), "{past}");
        let overflow = Storage::<u64>::mapped(&file, 8, usize::MAX / 4, "indptr").unwrap_err();
        assert!(
            overflow.to_string().contains("run past the end"),
            "{overflow}"
        );
        let misaligned = Storage::<f32>::mapped(&file, 2, 3, "area").unwrap_err();
        assert!(
            misaligned.to_string().contains("not aligned"),
            "{misaligned}"
        );
        assert!(Storage::<u8>::mapped(&file, 63, 1, "mask").is_ok());
    }
}
