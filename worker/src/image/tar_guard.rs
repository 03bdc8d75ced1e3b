//! [`TarGuard`]: a pass-through reader that follows a tar stream's headers
//! the way the `tar` crate (0.4) walks them, and stops the stream when a GNU
//! long-name, long-link or PAX extension entry is larger than
//! [`MAX_EXTENSION`]. The crate reads those entries whole into memory before
//! handing out the entry they describe, so without this a small gzip holding
//! one "long name" of many GiB would exhaust the daemon's memory long before
//! any size limit on the unpacked layer applies.
//!
//! The walk mirrors `tar::Archive`'s: a header every `512 + round_up(size)`
//! bytes, the size of an entry overridden by the `size` record of a PAX
//! extension before it (not for extension entries themselves), GNU sparse
//! extension blocks after a sparse header, the end at the first all-zero
//! header. Where the crate would fail (bad checksum, bad number), the guard
//! stops watching and lets the crate report the error.
//!
//! This module neither extracts nor limits the total size (see
//! [`super::limits`]).

use super::limits::Tripped;
use super::ImageError;
use std::io::{self, Read};
use std::sync::{Arc, Mutex};

/// The largest GNU long name / long link / PAX extension entry accepted.
pub const MAX_EXTENSION: u64 = 1 << 20;

const BLOCK: u64 = 512;

/// What the next 512-byte block at `at` is.
#[derive(Clone, Copy, Debug)]
enum Next {
    Header,
    /// A GNU sparse extension block; the entry's padded data follows the last one.
    SparseExt {
        padded: u64,
    },
}

/// See the module documentation.
pub struct TarGuard<R> {
    inner: R,
    /// Bytes passed so far.
    pos: u64,
    /// Where the next structural block starts.
    at: u64,
    next: Next,
    /// The block being gathered (up to 512 bytes).
    block: Vec<u8>,
    /// A PAX extension's data being gathered, and how much of it remains.
    collect: Option<(Vec<u8>, u64)>,
    /// The PAX extension that applies to the next real entry.
    pending_pax: Option<Vec<u8>>,
    /// The crate stops (end of archive or an error it reports itself).
    done: bool,
    tripped: Arc<Mutex<Option<ImageError>>>,
}

impl<R: Read> TarGuard<R> {
    /// Wraps `inner`; the [`Tripped`] handle tells the refusal apart later.
    pub fn new(inner: R) -> (TarGuard<R>, Tripped) {
        let tripped = Tripped::default();
        (
            TarGuard {
                inner,
                pos: 0,
                at: 0,
                next: Next::Header,
                block: Vec::with_capacity(BLOCK as usize),
                collect: None,
                pending_pax: None,
                done: false,
                tripped: tripped.shared(),
            },
            tripped,
        )
    }

    fn observe(&mut self, mut data: &[u8]) -> Result<(), ImageError> {
        while !data.is_empty() && !self.done {
            if self.pos < self.at {
                let n = (self.at - self.pos).min(data.len() as u64) as usize;
                if let Some((buf, remaining)) = &mut self.collect {
                    let take = (*remaining).min(n as u64) as usize;
                    buf.extend_from_slice(&data[..take]);
                    *remaining -= take as u64;
                }
                self.pos += n as u64;
                data = &data[n..];
                continue;
            }
            let n = (BLOCK as usize - self.block.len()).min(data.len());
            self.block.extend_from_slice(&data[..n]);
            self.pos += n as u64;
            data = &data[n..];
            if self.block.len() == BLOCK as usize {
                let block = std::mem::replace(&mut self.block, Vec::with_capacity(BLOCK as usize));
                match self.next {
                    Next::Header => self.on_header(&block)?,
                    Next::SparseExt { padded } => {
                        // GnuExtSparseHeader: 21 entries of 24 bytes, then `isextended`.
                        if block[504] == 1 {
                            self.at = self.pos;
                        } else {
                            self.next = Next::Header;
                            self.at = self.pos + padded;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn on_header(&mut self, block: &[u8]) -> Result<(), ImageError> {
        if let Some((buf, _)) = self.collect.take() {
            self.pending_pax = Some(buf);
        }
        if block.iter().all(|b| *b == 0) {
            self.done = true;
            return Ok(());
        }
        let mut header = tar::Header::new_old();
        header.as_mut_bytes().copy_from_slice(block);
        let sum = block[..148]
            .iter()
            .chain(&block[156..])
            .fold(0u32, |a, b| a + u32::from(*b))
            + 8 * 32;
        if header.cksum().ok() != Some(sum) {
            self.done = true;
            return Ok(());
        }
        let kind = block[156];
        let is_extension = matches!(kind, b'L' | b'K' | b'x' | b'g');
        let recognized = header.as_gnu().is_some() || header.as_ustar().is_some();
        let Ok(mut size) = header.entry_size() else {
            self.done = true;
            return Ok(());
        };
        if !is_extension {
            if let Some(pax_size) = self.pending_pax.as_deref().and_then(pax_size) {
                size = pax_size;
            }
        }
        let Some(padded) = size.checked_add(BLOCK - 1).map(|s| s & !(BLOCK - 1)) else {
            self.done = true;
            return Ok(());
        };
        if recognized && matches!(kind, b'L' | b'K' | b'x') {
            if size > MAX_EXTENSION {
                return Err(ImageError::TooLarge {
                    what: format!(
                        "a tar {} entry ({size} bytes)",
                        match kind {
                            b'L' => "GNU long name",
                            b'K' => "GNU long link",
                            _ => "PAX extension",
                        }
                    ),
                    limit: MAX_EXTENSION,
                    hint: "",
                });
            }
            if kind == b'x' {
                if self.pending_pax.is_some() {
                    // The crate refuses two PAX extensions for one member.
                    self.done = true;
                    return Ok(());
                }
                self.collect = Some((Vec::new(), size));
            }
            self.at = self.pos.saturating_add(padded);
            return Ok(());
        }
        // A member the crate hands out: the PAX extension was for it.
        self.pending_pax = None;
        let sparse_ext = kind == b'S' && header.as_gnu().is_some_and(|g| g.is_extended());
        if sparse_ext {
            self.next = Next::SparseExt { padded };
            self.at = self.pos;
        } else {
            self.at = self.pos.saturating_add(padded);
        }
        Ok(())
    }
}

/// The `size` record of a PAX extension, as the `tar` crate reads it (the
/// first `size` record; nothing when a record before it is malformed).
fn pax_size(data: &[u8]) -> Option<u64> {
    for ext in tar::PaxExtensions::new(data) {
        let ext = ext.ok()?;
        if ext.key() != Ok("size") {
            continue;
        }
        return ext.value().ok()?.parse().ok();
    }
    None
}

impl<R: Read> Read for TarGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self
            .tripped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
        {
            return Err(io::Error::other("the tar stream was refused"));
        }
        let n = self.inner.read(buf)?;
        if let Err(e) = self.observe(&buf[..n]) {
            let msg = e.to_string();
            *self.tripped.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            return Err(io::Error::other(msg));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: tar::EntryType, path: &str, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_path(path).unwrap();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_cksum();
        h
    }

    fn read_all(data: &[u8]) -> (Result<Vec<String>, String>, Tripped) {
        let (guard, tripped) = TarGuard::new(data);
        let mut archive = tar::Archive::new(guard);
        let result = (|| -> io::Result<Vec<String>> {
            let mut names = Vec::new();
            for e in archive.entries()? {
                let mut e = e?;
                names.push(String::from_utf8_lossy(&e.path_bytes()).into_owned());
                io::copy(&mut e, &mut io::sink())?;
            }
            Ok(names)
        })();
        (result.map_err(|e| e.to_string()), tripped)
    }

    #[test]
    fn a_huge_long_name_is_refused_before_it_is_read() {
        let mut tar = Vec::new();
        let size = 4 * MAX_EXTENSION;
        tar.extend_from_slice(
            header(tar::EntryType::GNULongName, "././@LongLink", size).as_bytes(),
        );
        tar.extend(std::iter::repeat_n(b'a', size as usize));
        tar.extend_from_slice(header(tar::EntryType::Regular, "x", 0).as_bytes());
        tar.extend([0u8; 1024]);
        let (result, tripped) = read_all(&tar);
        assert!(result.is_err(), "{result:?}");
        let e = tripped.explain(ImageError::BadArchive("other".into()));
        assert!(e.to_string().contains("GNU long name"), "{e}");
    }

    #[test]
    fn a_pax_size_moves_the_next_header_as_the_crate_does() {
        // A PAX size of 0 makes the crate read the next header right after
        // this one; the guard must follow and still catch the huge long name.
        let mut tar = Vec::new();
        let pax = b"10 size=0\n";
        tar.extend_from_slice(header(tar::EntryType::XHeader, "pax", pax.len() as u64).as_bytes());
        tar.extend_from_slice(pax);
        tar.extend(std::iter::repeat_n(0u8, 512 - pax.len()));
        tar.extend_from_slice(header(tar::EntryType::Regular, "claims-big", 1 << 30).as_bytes());
        let size = 2 * MAX_EXTENSION;
        tar.extend_from_slice(
            header(tar::EntryType::GNULongName, "././@LongLink", size).as_bytes(),
        );
        tar.extend(std::iter::repeat_n(b'b', size as usize));
        tar.extend_from_slice(header(tar::EntryType::Regular, "y", 0).as_bytes());
        tar.extend([0u8; 1024]);
        let (result, tripped) = read_all(&tar);
        assert!(result.is_err(), "{result:?}");
        let e = tripped.explain(ImageError::BadArchive("other".into()));
        assert!(matches!(e, ImageError::TooLarge { .. }), "{e}");
    }

    #[test]
    fn ordinary_archives_with_long_names_pax_and_sparse_pass() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let long = format!("{}/file", "d".repeat(300));
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o644);
        b.append_data(&mut h, &long, &b"hello"[..]).unwrap();
        b.append_pax_extensions([("comment", &b"a remark"[..])])
            .unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(3);
        h.set_mode(0o644);
        b.append_data(&mut h, "after-pax", &b"abc"[..]).unwrap();
        // A sparse file with more data regions than a GNU header holds (4),
        // so the builder adds sparse extension blocks.
        let sparse = dir.path().join("sparse");
        {
            use std::io::{Seek, Write};
            let mut f = std::fs::File::create(&sparse).unwrap();
            for k in 1..=8u64 {
                f.seek(io::SeekFrom::Start(k << 20)).unwrap();
                f.write_all(&[b'x'; 4096]).unwrap();
            }
        }
        b.sparse(true);
        b.append_path_with_name(&sparse, "sparse").unwrap();
        let tar = b.into_inner().unwrap();
        assert!(
            tar.chunks(512)
                .any(|h| h.len() == 512 && h[156] == b'S' && h[482] == 1),
            "the archive has an extended GNU sparse header"
        );
        let (result, _) = read_all(&tar);
        assert_eq!(
            result.unwrap(),
            vec![long, "after-pax".to_string(), "sparse".to_string()]
        );
        // The guard stays in step through all of that: a huge long name
        // after it is still caught.
        let mut evil = tar[..tar.len() - 1024].to_vec();
        let size = 2 * MAX_EXTENSION;
        evil.extend_from_slice(
            header(tar::EntryType::GNULongName, "././@LongLink", size).as_bytes(),
        );
        evil.extend(std::iter::repeat_n(b'c', size as usize));
        evil.extend_from_slice(header(tar::EntryType::Regular, "z", 0).as_bytes());
        evil.extend([0u8; 1024]);
        let (result, tripped) = read_all(&evil);
        assert!(result.is_err(), "{result:?}");
        let e = tripped.explain(ImageError::BadArchive("other".into()));
        assert!(matches!(e, ImageError::TooLarge { .. }), "{e}");
    }
}
