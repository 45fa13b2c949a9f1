//! Snapshots as a list of bounded chunks, never one buffer: built chunk by chunk from
//! the store, sent as a stream of frames, received frame by frame, restored through a
//! reader over the chunks. A snapshot held by openraft is shared, not copied, when it
//! is handed out.
//!
//! On the wire a snapshot is a sequence of frames, each a big-endian `u32` length and
//! that many bytes: first a header (the vote and snapshot metadata), then the chunks,
//! then an empty frame that marks the end, so that a cut stream is never taken for a
//! whole snapshot.

use std::io::{self, Read, Write};
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};

/// The largest chunk a snapshot is cut into, and the largest chunk frame accepted.
pub const CHUNK_BYTES: usize = 256 * 1024;
/// The largest header frame accepted (vote and membership).
const MAX_HEADER_BYTES: usize = 1024 * 1024;
const LENGTH_BYTES: usize = 4;

/// A snapshot's bytes, in chunks of at most [`CHUNK_BYTES`]. Clones share the chunks.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SnapshotChunks {
    chunks: Arc<Vec<Bytes>>,
    len: u64,
}

impl std::fmt::Debug for SnapshotChunks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SnapshotChunks({} bytes in {} chunks)",
            self.len,
            self.chunks.len()
        )
    }
}

impl SnapshotChunks {
    fn from_chunks(chunks: Vec<Bytes>) -> Self {
        let len = chunks.iter().map(|c| c.len() as u64).sum();
        Self {
            chunks: Arc::new(chunks),
            len,
        }
    }

    /// Total bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn chunks(&self) -> &[Bytes] {
        &self.chunks
    }

    /// Reads the bytes back in order.
    pub fn reader(&self) -> impl Read + '_ {
        ChunkReader {
            chunks: &self.chunks,
            index: 0,
            offset: 0,
        }
    }
}

/// Collects written bytes into chunks of [`CHUNK_BYTES`].
#[derive(Default)]
pub struct ChunkWriter {
    chunks: Vec<Bytes>,
    current: BytesMut,
}

impl ChunkWriter {
    pub fn finish(mut self) -> SnapshotChunks {
        if !self.current.is_empty() {
            self.chunks.push(self.current.split().freeze());
        }
        SnapshotChunks::from_chunks(self.chunks)
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut rest = buf;
        while !rest.is_empty() {
            if self.current.capacity() == 0 {
                self.current.reserve(CHUNK_BYTES);
            }
            let take = (CHUNK_BYTES - self.current.len()).min(rest.len());
            self.current.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.current.len() == CHUNK_BYTES {
                self.chunks.push(self.current.split().freeze());
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct ChunkReader<'a> {
    chunks: &'a [Bytes],
    index: usize,
    offset: usize,
}

impl Read for ChunkReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while let Some(chunk) = self.chunks.get(self.index) {
            let rest = &chunk[self.offset..];
            if rest.is_empty() {
                self.index += 1;
                self.offset = 0;
                continue;
            }
            let n = rest.len().min(buf.len());
            buf[..n].copy_from_slice(&rest[..n]);
            self.offset += n;
            return Ok(n);
        }
        Ok(0)
    }
}

/// The frames that carry `header` and `snapshot`, ready to stream as a request body.
pub fn frames(
    header: Bytes,
    snapshot: &SnapshotChunks,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    let length = |len: usize| Bytes::copy_from_slice(&(len as u32).to_be_bytes());
    let mut parts = vec![length(header.len()), header];
    for chunk in snapshot.chunks().iter() {
        parts.push(length(chunk.len()));
        parts.push(chunk.clone());
    }
    parts.push(length(0));
    futures_util::stream::iter(parts.into_iter().map(Ok))
}

/// Reads the frames of one snapshot from `body`: its header and its chunks. Refuses
/// frames past their limits, more than `max_bytes` in all, and a stream that ends
/// before the end frame.
pub async fn read_frames<E: std::fmt::Display>(
    body: impl Stream<Item = Result<Bytes, E>>,
    max_bytes: u64,
) -> Result<(Bytes, SnapshotChunks), String> {
    let mut body = std::pin::pin!(body);
    let mut buffer = BytesMut::new();
    let mut header: Option<Bytes> = None;
    let mut chunks = Vec::new();
    let mut total: u64 = 0;
    loop {
        // Take every complete frame in the buffer.
        while buffer.len() >= LENGTH_BYTES {
            let len =
                u32::from_be_bytes(buffer[..LENGTH_BYTES].try_into().expect("4 bytes")) as usize;
            let limit = if header.is_none() {
                MAX_HEADER_BYTES
            } else {
                CHUNK_BYTES
            };
            if len > limit {
                return Err(format!(
                    "snapshot frame of {len} bytes exceeds the limit of {limit}"
                ));
            }
            if buffer.len() < LENGTH_BYTES + len {
                break;
            }
            buffer.advance(LENGTH_BYTES);
            let frame = buffer.split_to(len).freeze();
            match &header {
                None => header = Some(frame),
                Some(_) if frame.is_empty() => {
                    if !buffer.is_empty() {
                        return Err("data after the end of the snapshot".into());
                    }
                    if let Some(more) = body.next().await {
                        let more = more.map_err(|e| format!("snapshot stream failed: {e}"))?;
                        if !more.is_empty() {
                            return Err("data after the end of the snapshot".into());
                        }
                    }
                    let header = header.expect("matched Some");
                    return Ok((header, SnapshotChunks::from_chunks(chunks)));
                }
                Some(_) => {
                    total += frame.len() as u64;
                    if total > max_bytes {
                        return Err(format!(
                            "snapshot exceeds {max_bytes} bytes, more than this node can hold"
                        ));
                    }
                    chunks.push(frame);
                }
            }
        }
        match body.next().await {
            Some(Ok(data)) => buffer.extend_from_slice(&data),
            Some(Err(e)) => return Err(format!("snapshot stream failed: {e}")),
            None => return Err("snapshot stream ended before its end frame".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(bytes: &[u8]) -> SnapshotChunks {
        let mut writer = ChunkWriter::default();
        // Odd write sizes cross chunk boundaries.
        for piece in bytes.chunks(1000) {
            writer.write_all(piece).unwrap();
        }
        writer.finish()
    }

    fn sample(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn chunks_are_bounded_and_read_back_whole() {
        let data = sample(3 * CHUNK_BYTES + 123);
        let snapshot = written(&data);
        assert_eq!(snapshot.len(), data.len() as u64);
        assert_eq!(snapshot.chunks().len(), 4);
        assert!(snapshot.chunks().iter().all(|c| c.len() <= CHUNK_BYTES));
        let mut back = Vec::new();
        snapshot.reader().read_to_end(&mut back).unwrap();
        assert_eq!(back, data);
        assert!(written(&[]).is_empty());
    }

    async fn collect(stream: impl Stream<Item = io::Result<Bytes>>) -> Vec<u8> {
        let parts: Vec<io::Result<Bytes>> = stream.collect().await;
        parts
            .into_iter()
            .flat_map(|p| p.unwrap().to_vec())
            .collect()
    }

    /// Feeds `wire` to the reader in pieces of `piece` bytes.
    async fn read_in_pieces(
        wire: &[u8],
        piece: usize,
        max: u64,
    ) -> Result<(Bytes, SnapshotChunks), String> {
        let pieces: Vec<Result<Bytes, io::Error>> = wire
            .chunks(piece)
            .map(|p| Ok(Bytes::copy_from_slice(p)))
            .collect();
        read_frames(futures_util::stream::iter(pieces), max).await
    }

    #[tokio::test]
    async fn frames_round_trip_whatever_the_network_cuts() {
        let data = sample(2 * CHUNK_BYTES + 5);
        let snapshot = written(&data);
        let wire = collect(frames(Bytes::from_static(b"meta"), &snapshot)).await;
        for piece in [1, 3, 4096, wire.len()] {
            let (header, back) = read_in_pieces(&wire, piece, u64::MAX).await.unwrap();
            assert_eq!(&header[..], b"meta");
            assert_eq!(back, snapshot, "pieces of {piece}");
        }
    }

    #[tokio::test]
    async fn cut_oversized_or_trailing_streams_are_refused() {
        let snapshot = written(&sample(CHUNK_BYTES + 10));
        let wire = collect(frames(Bytes::from_static(b"meta"), &snapshot)).await;

        let cut = read_in_pieces(&wire[..wire.len() - 4], 512, u64::MAX).await;
        assert!(cut.unwrap_err().contains("ended before"));

        let too_big = read_in_pieces(&wire, 512, 100).await;
        assert!(too_big.unwrap_err().contains("exceeds"));

        let mut trailing = wire.clone();
        trailing.extend_from_slice(b"junk");
        let trailing = read_in_pieces(&trailing, 512, u64::MAX).await;
        assert!(trailing.unwrap_err().contains("after the end"));

        let mut huge_frame = wire.clone();
        let header_frame = 4 + 4;
        huge_frame[header_frame..header_frame + 4]
            .copy_from_slice(&(CHUNK_BYTES as u32 + 1).to_be_bytes());
        let huge = read_in_pieces(&huge_frame, 512, u64::MAX).await;
        assert!(huge.unwrap_err().contains("limit"));
    }
}
