//! Large values stored as a tree of chunks, so that a change rewrites only the chunks it touches.
//!
//! OpenMLS rewrites whole values: after every message it writes the group's `MessageSecrets`
//! (secret tree, sender ratchets, past epochs) although only one sender ratchet moved. A
//! value encoded in format 2 ([`crate::value`]) of more than [`WHOLE_MAX`] bytes whose top
//! item is an array or a map is therefore cut into chunks along its structure:
//!
//! - every array or map item of more than [`CHUNK_MIN`] bytes is replaced by the marker byte
//!   `0xf7` (CBOR `undefined`, which format 2 never writes) and stored as a chunk of its own,
//!   recursively; smaller items stay inline;
//! - a chunk whose array or map has more than [`PAGE`] items (a map's keys and values each
//!   count) holds one marker per page of [`PAGE`] items instead, and each page is a chunk of
//!   its own holding those items (inline or as markers, by the rule above), so that a large
//!   array of small items (a 1,000-member group's sender ratchets, mostly empty) is not
//!   rewritten whole either.
//!
//! A chunk is named by its path from the top: the position of each item (or page) on the way,
//! as CBOR unsigned integers one after the other. Inside a paged container an item's path is
//! its page's path followed by its position within the page. Given the top chunk and a way
//! to fetch chunks by path, [`assemble`] puts the value's encoding back together.

use std::collections::VecDeque;
use std::ops::Range;

use crate::value::{index, item_end, Container, Item};

/// Values up to this size (format 2 encoding) are stored whole.
pub const WHOLE_MAX: usize = 256;
/// Arrays and maps above this size get a chunk of their own.
pub const CHUNK_MIN: usize = 48;
/// Items per page of a large array or map.
pub const PAGE: usize = 32;
/// The marker standing for an item stored as a chunk of its own.
pub const MARKER: u8 = 0xf7;
/// Deepest chunk path read back (a corrupt store must fail, not exhaust the stack).
const MAX_DEPTH: usize = 128;

/// Why a chunked value could not be put back together.
#[derive(Debug, PartialEq)]
pub struct ChunkError(pub String);

fn push_index(path: &mut Vec<u8>, index: usize) {
    crate::value::write_uint(path, index as u64);
}

fn child_path(path: &[u8], index: usize) -> Vec<u8> {
    let mut out = path.to_vec();
    push_index(&mut out, index);
    out
}

/// A value cut into chunks: the top chunk and the others (path, bytes), all in one buffer.
pub struct Split {
    data: Vec<u8>,
    top: Range<usize>,
    chunks: Vec<(Range<usize>, Range<usize>)>,
}

impl Split {
    pub fn top(&self) -> &[u8] {
        &self.data[self.top.clone()]
    }

    /// The chunks below the top: (path, bytes).
    pub fn chunks(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.chunks
            .iter()
            .map(|(path, bytes)| (&self.data[path.clone()], &self.data[bytes.clone()]))
    }
}

/// What is still to be written as a chunk: a container item, or one page of one.
enum Job {
    Container {
        item: usize,
        path: Range<usize>,
    },
    Page {
        first: usize,
        count: usize,
        path: Range<usize>,
    },
}

/// Cut `body` (one format-2 item) into chunks, or `None` if it is stored whole (small, or
/// not a definite-length array or map).
pub fn split(body: &[u8]) -> Option<Split> {
    if body.len() <= WHOLE_MAX {
        return None;
    }
    Container::at(body, 0)?;
    let items = index(body).ok()?;
    let mut cutter = Cutter {
        body,
        items: &items,
        data: Vec::with_capacity(body.len() + body.len() / 2),
        paths: Vec::new(),
        jobs: VecDeque::new(),
    };
    cutter.container(0, 0..0);
    let top = 0..cutter.data.len();
    let mut chunks = Vec::new();
    while let Some(job) = cutter.jobs.pop_front() {
        let path = match &job {
            Job::Container { path, .. } | Job::Page { path, .. } => path.clone(),
        };
        let path_start = cutter.data.len();
        cutter.data.extend_from_slice(&cutter.paths[path.clone()]);
        let path_range = path_start..cutter.data.len();
        match job {
            Job::Container { item, .. } => cutter.container(item, path),
            Job::Page { first, count, .. } => cutter.page(first, count, path),
        }
        chunks.push((path_range.clone(), path_range.end..cutter.data.len()));
    }
    Some(Split {
        data: cutter.data,
        top,
        chunks,
    })
}

struct Cutter<'a> {
    body: &'a [u8],
    items: &'a [Item],
    data: Vec<u8>,
    /// Every path handed to a job, one after the other.
    paths: Vec<u8>,
    jobs: VecDeque<Job>,
}

impl Cutter<'_> {
    fn path(&mut self, parent: &Range<usize>, index: usize) -> Range<usize> {
        let start = self.paths.len();
        self.paths.extend_from_within(parent.clone());
        push_index(&mut self.paths, index);
        start..self.paths.len()
    }

    /// Write item `i` inline, or a marker and a job for its own chunk.
    fn item(&mut self, i: usize, parent: &Range<usize>, k: usize) {
        let item = &self.items[i];
        if item.container && item.end - item.start > CHUNK_MIN {
            self.data.push(MARKER);
            let path = self.path(parent, k);
            self.jobs.push_back(Job::Container { item: i, path });
        } else {
            self.data.extend_from_slice(&self.body[item.start..item.end]);
        }
    }

    /// The chunk of container item `c`: its head, then its items (or one marker per page).
    fn container(&mut self, c: usize, path: Range<usize>) {
        let container = &self.items[c];
        let (count, mut child) = (container.children, c + 1);
        self.data
            .extend_from_slice(&self.body[container.start..container.start + container.head_len]);
        if count > PAGE {
            for page in 0..count.div_ceil(PAGE) {
                self.data.push(MARKER);
                let in_page = PAGE.min(count - page * PAGE);
                let page_path = self.path(&path, page);
                self.jobs.push_back(Job::Page {
                    first: child,
                    count: in_page,
                    path: page_path,
                });
                for _ in 0..in_page {
                    child = self.items[child].next;
                }
            }
        } else {
            for k in 0..count {
                self.item(child, &path, k);
                child = self.items[child].next;
            }
        }
    }

    fn page(&mut self, first: usize, count: usize, path: Range<usize>) {
        let mut child = first;
        for k in 0..count {
            self.item(child, &path, k);
            child = self.items[child].next;
        }
    }
}

/// Put a chunked value back together from its `top` chunk; `chunk(path)` fetches the others.
pub fn assemble<'a>(top: &[u8], chunk: &dyn Fn(&[u8]) -> Option<&'a [u8]>) -> Result<Vec<u8>, ChunkError> {
    let mut out = Vec::with_capacity(top.len() * 4);
    Assembler { chunk }.container(top, &[], &mut out, 0)?;
    Ok(out)
}

struct Assembler<'f, 'a> {
    chunk: &'f dyn Fn(&[u8]) -> Option<&'a [u8]>,
}

impl<'a> Assembler<'_, 'a> {
    fn fetch(&self, path: &[u8]) -> Result<&'a [u8], ChunkError> {
        (self.chunk)(path).ok_or_else(|| ChunkError(format!("chunk {path:02x?} is missing")))
    }

    /// Copy the container chunk `bytes` (exactly one container, its big items as markers).
    fn container(&self, bytes: &[u8], path: &[u8], out: &mut Vec<u8>, depth: usize) -> Result<(), ChunkError> {
        if depth > MAX_DEPTH {
            return Err(ChunkError("chunks nested too deeply".into()));
        }
        let head =
            Container::at(bytes, 0).ok_or_else(|| ChunkError(format!("chunk {path:02x?} is not a container")))?;
        out.extend_from_slice(&bytes[..head.head_len]);
        let mut pos = head.head_len;
        if head.items > PAGE {
            for page in 0..head.items.div_ceil(PAGE) {
                if bytes.get(pos) != Some(&MARKER) {
                    return Err(ChunkError(format!("chunk {path:02x?}: page {page} is not a marker")));
                }
                pos += 1;
                let page_path = child_path(path, page);
                let page_bytes = self.fetch(&page_path)?;
                let mut at = 0;
                for k in 0..PAGE.min(head.items - page * PAGE) {
                    self.item(page_bytes, &mut at, &child_path(&page_path, k), out, depth)?;
                }
                if at != page_bytes.len() {
                    return Err(ChunkError(format!("page {page_path:02x?} is longer than its items")));
                }
            }
        } else {
            for k in 0..head.items {
                self.item(bytes, &mut pos, &child_path(path, k), out, depth)?;
            }
        }
        if pos != bytes.len() {
            return Err(ChunkError(format!("chunk {path:02x?} is longer than its items")));
        }
        Ok(())
    }

    fn item(
        &self,
        bytes: &[u8],
        pos: &mut usize,
        path: &[u8],
        out: &mut Vec<u8>,
        depth: usize,
    ) -> Result<(), ChunkError> {
        match bytes.get(*pos) {
            None => Err(ChunkError(format!("chunk ends before item {path:02x?}"))),
            Some(&MARKER) => {
                *pos += 1;
                self.container(self.fetch(path)?, path, out, depth + 1)
            }
            Some(_) => {
                let end = item_end(bytes, *pos).map_err(|e| ChunkError(format!("item {path:02x?}: {e}")))?;
                out.extend_from_slice(&bytes[*pos..end]);
                *pos = end;
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Serialize;

    use super::*;
    use crate::value::to_vec;

    #[derive(Serialize, Clone)]
    struct Ratchet {
        secret: Vec<u8>,
        generation: u32,
    }

    #[derive(Serialize, Clone)]
    struct Secrets {
        context: Vec<u8>,
        ratchets: Vec<Option<Ratchet>>,
        past: Vec<Vec<u8>>,
    }

    fn secrets(members: usize) -> Secrets {
        Secrets {
            context: vec![7; 100],
            ratchets: (0..members)
                .map(|i| {
                    (i % 3 != 2).then(|| Ratchet {
                        secret: vec![i as u8; 32],
                        generation: 0,
                    })
                })
                .collect(),
            past: vec![vec![1; 2000], vec![2; 10]],
        }
    }

    fn stored(body: &[u8]) -> (Vec<u8>, BTreeMap<Vec<u8>, Vec<u8>>) {
        let split = split(body).expect("large enough to split");
        let below = split
            .chunks()
            .map(|(path, bytes)| (path.to_vec(), bytes.to_vec()))
            .collect();
        (split.top().to_vec(), below)
    }

    fn put_together(top: &[u8], below: &BTreeMap<Vec<u8>, Vec<u8>>) -> Result<Vec<u8>, ChunkError> {
        assemble(top, &|path| below.get(path).map(|v| v.as_slice()))
    }

    #[test]
    fn small_values_and_non_containers_are_stored_whole() {
        assert!(split(&to_vec(&vec![1u32; 10]).unwrap()).is_none());
        assert!(split(&to_vec(&vec![1u8; 5000]).unwrap()).is_none()); // one byte string
    }

    #[test]
    fn a_split_value_puts_itself_back_together() {
        for members in [1, 2, 10, 33, 100, 1000] {
            let body = to_vec(&secrets(members)).unwrap();
            let (top, below) = stored(&body);
            assert_eq!(put_together(&top, &below).unwrap(), body, "{members}");
            // No chunk is larger than a page of small items, except for big inline leaves.
            assert!(
                below.values().all(|c| c.len() <= 32 * CHUNK_MIN || c.len() > 2000),
                "{members}"
            );
        }
    }

    #[test]
    fn a_change_rewrites_only_the_chunks_it_touches() {
        for members in [2, 10, 100, 1000] {
            let before = secrets(members);
            let mut after = before.clone();
            after.ratchets[1].as_mut().unwrap().generation = 1;
            after.ratchets[1].as_mut().unwrap().secret = vec![0xaa; 32];
            let (top1, old) = stored(&to_vec(&before).unwrap());
            let (top2, new) = stored(&to_vec(&after).unwrap());
            assert_eq!(top1, top2);
            assert_eq!(old.keys().collect::<Vec<_>>(), new.keys().collect::<Vec<_>>());
            let changed: Vec<_> = new
                .iter()
                .filter(|(path, bytes)| old.get(*path) != Some(bytes))
                .collect();
            assert_eq!(changed.len(), 1, "{members}: {changed:02x?}");
            assert!(
                changed[0].1.len() <= CHUNK_MIN + 32,
                "{members}: {} bytes",
                changed[0].1.len()
            );
        }
    }

    #[test]
    fn missing_or_mangled_chunks_are_errors() {
        let body = to_vec(&secrets(100)).unwrap();
        let (top, below) = stored(&body);
        for path in below.keys() {
            let mut fewer = below.clone();
            fewer.remove(path);
            assert!(put_together(&top, &fewer).is_err());
            let mut longer = below.clone();
            longer.get_mut(path).unwrap().push(0);
            assert!(put_together(&top, &longer).is_err());
        }
        assert!(put_together(&top[..top.len() - 1], &below).is_err());
        assert!(put_together(b"\x01", &below).is_err());
        // A chunk that names itself again and again ends with an error, not a stack overflow.
        let mut looping = BTreeMap::new();
        let mut path = Vec::new();
        for _ in 0..200 {
            path.push(0);
            looping.insert(path.clone(), vec![0x81, MARKER]);
        }
        assert!(put_together(&[0x81, MARKER], &looping).is_err());
    }
}
