//! How large a peer's Automerge bytes become once loaded, found before automerge loads them: a
//! few kilobytes can claim gigabytes, through DEFLATE-compressed columns or chunks, or through
//! run-length encoded columns that say "this operation, a billion times". The scan reads the
//! chunk and column headers (the Automerge binary format), inflates compressed parts into a
//! counter with a budget, and counts the operations in each action column's runs, so nothing
//! it reads grows past the limits in memory.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::io::{self, BufRead, BufReader, Read};

use flate2::bufread::DeflateDecoder;

use crate::BlobHash;
use crate::blob_refs::RefScan;

/// Bytes before a chunk's data length: magic (4), checksum (4), type (1).
const CHUNK_HEADER: usize = 9;
const DOCUMENT_CHUNK: u8 = 0;
const CHANGE_CHUNK: u8 = 1;
const COMPRESSED_CHANGE_CHUNK: u8 = 2;
/// A column spec's DEFLATE bit.
const DEFLATE: u64 = 0b1000;
/// The action column's spec (column 4, unsigned integers), whatever its DEFLATE bit: one entry
/// per operation.
const ACTION: u64 = (4 << 4) | 2;

/// What loading a peer's Automerge bytes may cost at most; see
/// [`StoreConfig::max_doc_bytes`](crate::StoreConfig::max_doc_bytes) and
/// [`StoreConfig::max_doc_ops`](crate::StoreConfig::max_doc_ops).
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct Limits {
    /// Bytes once every compressed part is inflated.
    pub bytes: u64,
    /// Operations.
    pub ops: u64,
}

/// Why Automerge bytes were refused before loading.
#[derive(Clone, Copy, Debug, Eq, PartialEq, thiserror::Error)]
pub enum Exceeds {
    /// They inflate past the byte limit.
    #[error("the document inflates past the byte limit")]
    Bytes,
    /// They hold more operations than the limit.
    #[error("the document holds more operations than the limit")]
    Ops,
    /// Their headers do not parse (automerge would refuse them too).
    #[error("the document's chunk or column headers do not parse")]
    Malformed,
}

/// Checks that `bytes`, a run of Automerge chunks, stay within `limits` once loaded, before
/// anything of them is loaded: compressed parts are inflated into a counter with a budget and
/// the operations in each action column are counted from its runs. Nothing read grows past
/// the limits in memory.
///
/// # Examples
///
/// ```
/// use automerge::{Automerge, ROOT, transaction::Transactable};
/// use ferry_store::{Exceeds, Limits, within_limits};
///
/// let mut doc = Automerge::new();
/// doc.transact(|tx| tx.put(ROOT, "text", "a".repeat(1 << 20))).unwrap();
/// let saved = doc.save(); // a few kilobytes: the text compresses well
/// let tight = Limits { bytes: 64 * 1024, ops: 1_000 };
/// assert_eq!(within_limits(&saved, tight), Err(Exceeds::Bytes));
/// ```
pub fn within_limits(bytes: &[u8], limits: Limits) -> Result<(), Exceeds> {
    scan(bytes, limits).map(drop)
}

/// [`within_limits`], and the blob references found in the bytes as they are inflated.
pub(crate) fn scan(mut bytes: &[u8], limits: Limits) -> Result<BTreeSet<BlobHash>, Exceeds> {
    let budget = Budget {
        bytes: Cell::new(limits.bytes),
        ops: Cell::new(limits.ops),
        exceeded: Cell::new(None),
        refs: RefCell::default(),
    };
    while !bytes.is_empty() {
        let mut rest = bytes.get(CHUNK_HEADER..).ok_or(Exceeds::Malformed)?;
        let len = leb128::read::unsigned(&mut rest).map_err(|_| Exceeds::Malformed)?;
        let header = bytes.len() - rest.len();
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| header.checked_add(len))
            .filter(|end| *end <= bytes.len())
            .ok_or(Exceeds::Malformed)?;
        let data = &bytes[header..end];
        let checked = match bytes[CHUNK_HEADER - 1] {
            DOCUMENT_CHUNK => document(data, &budget),
            CHANGE_CHUNK => change(&mut BufReader::new(Counted::new(data, &budget)), &budget),
            // Inflated as it is read, never into memory.
            COMPRESSED_CHANGE_CHUNK => change(
                &mut BufReader::new(Counted::new(DeflateDecoder::new(data), &budget)),
                &budget,
            ),
            _ => return Err(Exceeds::Malformed),
        };
        checked.map_err(|_| budget.exceeded.get().unwrap_or(Exceeds::Malformed))?;
        bytes = &bytes[end..];
    }
    Ok(budget.refs.into_inner().found)
}

/// What is left to spend, shared by the readers nested in one another.
struct Budget {
    bytes: Cell<u64>,
    ops: Cell<u64>,
    /// Which limit ran out, so a failed read says so rather than "malformed".
    exceeded: Cell<Option<Exceeds>>,
    /// The blob references in what was read.
    refs: RefCell<RefScan>,
}

impl Budget {
    fn spend_bytes(&self, n: u64) -> io::Result<()> {
        match self.bytes.get().checked_sub(n) {
            Some(left) => {
                self.bytes.set(left);
                Ok(())
            }
            None => Err(self.exceed(Exceeds::Bytes)),
        }
    }

    fn count_ops(&self, n: u64) -> io::Result<()> {
        match self.ops.get().checked_sub(n) {
            Some(left) => {
                self.ops.set(left);
                Ok(())
            }
            None => Err(self.exceed(Exceeds::Ops)),
        }
    }

    fn exceed(&self, what: Exceeds) -> io::Error {
        self.exceeded.set(Some(what));
        io::Error::other("over a limit")
    }
}

/// A reader that spends the budget's bytes as they are read.
struct Counted<'a, R> {
    inner: R,
    budget: &'a Budget,
}

impl<'a, R: Read> Counted<'a, R> {
    fn new(inner: R, budget: &'a Budget) -> Self {
        Self { inner, budget }
    }
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.budget.spend_bytes(n as u64)?;
        self.budget.refs.borrow_mut().feed(&buf[..n]);
        Ok(n)
    }
}

fn malformed() -> io::Error {
    io::Error::from(io::ErrorKind::InvalidData)
}

fn uleb(r: &mut impl Read) -> io::Result<u64> {
    leb128::read::unsigned(r).map_err(|e| match e {
        leb128::read::Error::IoError(e) => e,
        leb128::read::Error::Overflow => malformed(),
    })
}

fn sleb(r: &mut impl Read) -> io::Result<i64> {
    leb128::read::signed(r).map_err(|e| match e {
        leb128::read::Error::IoError(e) => e,
        leb128::read::Error::Overflow => malformed(),
    })
}

/// Reads and drops exactly `len` bytes.
fn skip(r: &mut impl Read, len: u64) -> io::Result<()> {
    if io::copy(&mut r.take(len), &mut io::sink())? < len {
        return Err(malformed());
    }
    Ok(())
}

/// Column metadata: a count, then each column's spec and data length.
fn columns(r: &mut impl Read, budget: &Budget) -> io::Result<Vec<(u64, u64)>> {
    let n = uleb(r)?;
    // Each takes at least two bytes: more than the budget can pay for is not allocated.
    if n > budget.bytes.get() / 2 {
        return Err(budget.exceed(Exceeds::Bytes));
    }
    (0..n).map(|_| Ok((uleb(r)?, uleb(r)?))).collect()
}

/// The entries of a run-length encoded column of unsigned integers, read to its end: runs of
/// one value, runs of literals, and runs of nulls.
fn runs(r: &mut impl BufRead) -> io::Result<u64> {
    let mut entries: u64 = 0;
    while !r.fill_buf()?.is_empty() {
        let n = match sleb(r)? {
            0 => uleb(r)?,
            n if n > 0 => {
                uleb(r)?;
                n.unsigned_abs()
            }
            n => {
                for _ in 0..n.unsigned_abs() {
                    uleb(r)?;
                }
                n.unsigned_abs()
            }
        };
        entries = entries.saturating_add(n);
    }
    Ok(entries)
}

/// One column's data, inflated if compressed: the operations counted if it is an operation
/// column's action column, any other column's bytes only.
fn column(data: impl Read, spec: u64, of_ops: bool, budget: &Budget) -> io::Result<()> {
    let mut data: Box<dyn BufRead + '_> = if spec & DEFLATE == 0 {
        Box::new(BufReader::new(Counted::new(data, budget)))
    } else {
        let inflated = DeflateDecoder::new(BufReader::new(data));
        Box::new(BufReader::new(Counted::new(inflated, budget)))
    };
    if of_ops && spec & !DEFLATE == ACTION {
        let ops = runs(&mut data)?;
        budget.count_ops(ops)
    } else {
        io::copy(&mut data, &mut io::sink()).map(drop)
    }
}

/// A document chunk: actors, heads, the change and operation columns' specs and lengths, then
/// the columns' data and the head indices.
fn document(data: &[u8], budget: &Budget) -> io::Result<()> {
    let mut rest = data;
    let mut r = Counted::new(&mut rest, budget);
    for _ in 0..uleb(&mut r)? {
        let len = uleb(&mut r)?;
        skip(&mut r, len)?;
    }
    let heads = uleb(&mut r)?;
    skip(&mut r, heads.checked_mul(32).ok_or_else(malformed)?)?;
    let change_columns = columns(&mut r, budget)?;
    let op_columns = columns(&mut r, budget)?;
    for (i, (spec, len)) in change_columns.iter().chain(&op_columns).enumerate() {
        let len = usize::try_from(*len).map_err(|_| malformed())?;
        if len > rest.len() {
            return Err(malformed());
        }
        let (data, after) = rest.split_at(len);
        rest = after;
        // (Change columns reuse the operation columns' ids.)
        column(data, *spec, i >= change_columns.len(), budget)?;
    }
    // The head indices that follow are small: their bytes are counted.
    budget.spend_bytes(rest.len() as u64)
}

/// A change chunk's data: its header, the operation columns' specs and lengths, their data
/// (never compressed inside a change), and any extra bytes.
fn change(r: &mut impl BufRead, budget: &Budget) -> io::Result<()> {
    let deps = uleb(r)?;
    skip(r, deps.checked_mul(32).ok_or_else(malformed)?)?;
    let actor = uleb(r)?;
    skip(r, actor)?;
    uleb(r)?; // seq
    uleb(r)?; // start op
    sleb(r)?; // time
    let message = uleb(r)?;
    skip(r, message)?;
    for _ in 0..uleb(r)? {
        let actor = uleb(r)?;
        skip(r, actor)?;
    }
    for (spec, len) in columns(r, budget)? {
        if spec & DEFLATE != 0 {
            return Err(malformed());
        }
        let mut data = r.by_ref().take(len);
        if spec == ACTION {
            let ops = runs(&mut BufReader::new(&mut data))?;
            budget.count_ops(ops)?;
        }
        // (What `runs` left unread, or the whole of another column.)
        io::copy(&mut data, &mut io::sink())?;
        if data.limit() > 0 {
            return Err(malformed());
        }
    }
    io::copy(r, &mut io::sink()).map(drop)
}

#[cfg(test)]
mod tests {
    use automerge::transaction::Transactable;
    use automerge::{Automerge, ROOT};

    use super::*;

    const ROOMY: Limits = Limits {
        bytes: u64::MAX,
        ops: u64::MAX,
    };

    fn doc(ops: usize) -> Automerge {
        let mut doc = Automerge::new();
        let mut tx = doc.transaction();
        let list = tx
            .put_object(ROOT, "list", automerge::ObjType::List)
            .unwrap();
        for i in 0..ops {
            tx.insert(&list, i, i as i64).unwrap();
        }
        tx.commit();
        doc
    }

    #[test]
    fn counts_the_operations_of_a_saved_document() {
        let saved = doc(1000).save();
        assert_eq!(within_limits(&saved, ROOMY), Ok(()));
        // 1,001 operations: the list and its items.
        let few = Limits { ops: 1000, ..ROOMY };
        assert_eq!(within_limits(&saved, few), Err(Exceeds::Ops));
        let enough = Limits { ops: 1001, ..ROOMY };
        assert_eq!(within_limits(&saved, enough), Ok(()));
    }

    #[test]
    fn counts_inflated_bytes_of_compressed_columns_and_chunks() {
        // Many equal values compress well: the saved form is far smaller than its columns.
        let mut doc = Automerge::new();
        let mut tx = doc.transaction();
        tx.put(ROOT, "text", "a".repeat(1 << 20)).unwrap();
        tx.commit();
        let saved = doc.save();
        assert!(saved.len() < 100_000, "{}", saved.len());
        let tight = Limits {
            bytes: 512 * 1024,
            ..ROOMY
        };
        assert_eq!(within_limits(&saved, tight), Err(Exceeds::Bytes));
        assert_eq!(within_limits(&saved, ROOMY), Ok(()));
        // A compressed change chunk (what `save_incremental` writes for a large change).
        let change = doc.get_changes(&[]).remove(0).bytes().to_vec();
        assert_eq!(change[8], COMPRESSED_CHANGE_CHUNK);
        assert_eq!(within_limits(&change, tight), Err(Exceeds::Bytes));
        assert_eq!(within_limits(&change, ROOMY), Ok(()));
    }

    /// A document chunk of a few bytes whose one operation column is `column` under `spec`.
    fn bomb(spec: u8, column: &[u8]) -> Vec<u8> {
        let mut data = vec![
            0, // actors
            0, // heads
            0, // change columns
            1, // operation columns: one
            spec,
        ];
        leb128::write::unsigned(&mut data, column.len() as u64).unwrap();
        data.extend_from_slice(column);
        // Magic and checksum (automerge's; the scan reads neither), type, length, data.
        let mut chunk = vec![0x85, 0x6f, 0x4a, 0x83, 0, 0, 0, 0, DOCUMENT_CHUNK];
        leb128::write::unsigned(&mut chunk, data.len() as u64).unwrap();
        chunk.extend_from_slice(&data);
        chunk
    }

    #[test]
    fn a_few_bytes_claiming_a_trillion_operations_are_refused_at_once() {
        // One run: "this action, 10^12 times".
        let mut run = Vec::new();
        leb128::write::signed(&mut run, 1_000_000_000_000).unwrap();
        leb128::write::unsigned(&mut run, 1).unwrap();
        let chunk = bomb(ACTION as u8, &run);
        assert!(chunk.len() < 32, "{} bytes", chunk.len());
        let limits = Limits {
            bytes: 1 << 30,
            ops: 10_000_000,
        };
        // Counted from the run's header: nothing is materialized.
        assert_eq!(within_limits(&chunk, limits), Err(Exceeds::Ops));
    }

    #[test]
    fn a_column_inflating_past_the_limit_is_refused_without_inflating_it_all() {
        // 256 MiB of zeros, deflated to some 250 KB, in a column the scan inflates.
        let mut deflated = Vec::new();
        {
            let mut encoder =
                flate2::write::DeflateEncoder::new(&mut deflated, flate2::Compression::best());
            let zeros = vec![0u8; 1 << 20];
            for _ in 0..256 {
                std::io::Write::write_all(&mut encoder, &zeros).unwrap();
            }
            encoder.finish().unwrap();
        }
        let value_column = (5 << 4) | 7 | DEFLATE as u8; // raw values, deflated
        let chunk = bomb(value_column, &deflated);
        assert!(chunk.len() < 1 << 20, "{} bytes", chunk.len());
        let limits = Limits {
            bytes: 8 << 20,
            ops: u64::MAX,
        };
        // The inflater reads into a counter that fails at the limit: it stops there, and
        // nothing inflated is kept.
        assert_eq!(within_limits(&chunk, limits), Err(Exceeds::Bytes));
        let roomy = Limits {
            bytes: 1 << 30,
            ops: u64::MAX,
        };
        assert_eq!(within_limits(&chunk, roomy), Ok(()));
    }

    #[test]
    fn bad_headers_are_malformed_not_a_panic() {
        let saved = doc(10).save();
        for cut in [1, 9, 12, saved.len() / 2, saved.len() - 1] {
            assert_eq!(
                within_limits(&saved[..cut], ROOMY),
                Err(Exceeds::Malformed),
                "{cut}"
            );
        }
    }
}
