//! Storage buffers: creation, upload, read-back, and tensors split by rows over several buffers.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use wgpu::util::DeviceExt;

use crate::error::{Error, Result};
use crate::gpu::Gpu;

/// A contiguous range of rows of a larger matrix, in a buffer of its own.
pub struct Rows {
    pub buffer: wgpu::Buffer,
    /// Index of the first row this buffer holds.
    pub start: u32,
    /// Number of rows it holds.
    pub count: u32,
}

/// A matrix stored by rows over as many buffers as the binding limit requires.
pub struct Split {
    pub chunks: Vec<Rows>,
}

/// Buffer usage for everything the kernels read or write.
pub const STORAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_DST)
    .union(wgpu::BufferUsages::COPY_SRC);

fn padded(bytes: u64) -> u64 {
    bytes.div_ceil(4).max(1) * 4
}

impl Gpu {
    /// A zeroed storage buffer of at least `bytes` bytes.
    pub fn storage(&self, label: &str, bytes: u64) -> Result<wgpu::Buffer> {
        let size = padded(bytes);
        if size > self.caps.max_binding {
            return Err(Error::Limit {
                what: format!("buffer `{label}`"),
                needed: size,
                max: self.caps.max_binding,
            });
        }
        Ok(self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: STORAGE,
            mapped_at_creation: false,
        }))
    }

    /// A storage buffer holding `data` (padded to 4 bytes).
    pub fn upload(&self, label: &str, data: &[u8]) -> Result<wgpu::Buffer> {
        let buf = self.storage(label, data.len() as u64)?;
        self.write(&buf, 0, data);
        Ok(buf)
    }

    /// Writes bytes at an offset, padding the tail to 4 bytes as wgpu requires.
    pub fn write(&self, buf: &wgpu::Buffer, offset: u64, data: &[u8]) {
        if data.len().is_multiple_of(4) {
            self.queue.write_buffer(buf, offset, data);
        } else {
            let mut v = data.to_vec();
            v.resize(padded(data.len() as u64) as usize, 0);
            self.queue.write_buffer(buf, offset, &v);
        }
    }

    /// A uniform buffer with fixed contents.
    pub fn uniform(&self, label: &str, data: &[u8]) -> wgpu::Buffer {
        let mut v = data.to_vec();
        v.resize(v.len().div_ceil(16).max(1) * 16, 0);
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: &v,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            })
    }

    /// Copies `bytes` bytes from the start of `buf` back to the host once the GPU is done.
    pub async fn read(&self, buf: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
        let size = padded(bytes);
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("read-back"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(buf, 0, &staging, 0, size);
        let copied = self.queue.submit([enc.finish()]);
        let mut out = map_read(self, &staging, size, copied).await?;
        out.truncate(bytes as usize);
        Ok(out)
    }

    /// Reads a buffer of f32 values.
    pub async fn read_f32(&self, buf: &wgpu::Buffer, n: usize) -> Result<Vec<f32>> {
        Ok(bytemuck::pod_collect_to_vec(
            &self.read(buf, n as u64 * 4).await?,
        ))
    }

    /// Reads a buffer of u32 values.
    pub async fn read_u32(&self, buf: &wgpu::Buffer, n: usize) -> Result<Vec<u32>> {
        Ok(bytemuck::pod_collect_to_vec(
            &self.read(buf, n as u64 * 4).await?,
        ))
    }

    /// Plans how a matrix of `rows` rows of `row_bytes` bytes is cut so that no buffer exceeds the
    /// binding limit; cuts fall on multiples of `rows_per_unit` (an expert's rows stay together).
    pub fn plan_split(
        &self,
        label: &str,
        rows: u64,
        row_bytes: u64,
        rows_per_unit: u64,
    ) -> Result<Vec<(u32, u32)>> {
        let unit_bytes = row_bytes * rows_per_unit;
        if unit_bytes > self.caps.split_bytes {
            return Err(Error::Limit {
                what: format!("one unit of `{label}`"),
                needed: unit_bytes,
                max: self.caps.split_bytes,
            });
        }
        let units_per_chunk = self.caps.split_bytes / unit_bytes;
        let rows_per_chunk = units_per_chunk * rows_per_unit;
        let mut out = Vec::new();
        let mut start = 0;
        while start < rows {
            let count = rows_per_chunk.min(rows - start);
            out.push((start as u32, count as u32));
            start += count;
        }
        Ok(out)
    }
}

/// A buffer the host rewrites before each forward pass (its step counts, tokens, sampling
/// settings), with the bytes it last wrote there. Each `queue.write_buffer` runs on the GPU as a
/// copy behind a barrier of its own, between one pass and the next: a decode step wrote four
/// such buffers, and leaving all four out took a batch-1 step from 2.41 to 2.37 ms on the H100
/// (PERF.md v0.53). From one step to the next only the tokens change, so a write whose bytes the
/// buffer already holds is skipped.
pub struct Upload {
    pub buffer: wgpu::Buffer,
    /// The buffer's first bytes as the writes queued so far leave them. The lock is held across
    /// the write, so the queue sees the writes in the order this records them.
    known: Mutex<Vec<u8>>,
    /// Writes queued, for tests.
    #[cfg(test)]
    queued: std::sync::atomic::AtomicU32,
}

impl Upload {
    pub fn new(buffer: wgpu::Buffer) -> Upload {
        Upload {
            buffer,
            known: Mutex::new(Vec::new()),
            #[cfg(test)]
            queued: Default::default(),
        }
    }

    /// Puts `data` at the start of the buffer, unless it is there already.
    pub fn write(&self, gpu: &Gpu, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        // `Gpu::write` pads the data with zeros to 4 bytes.
        let (len, n) = (data.len(), padded(data.len() as u64) as usize);
        let held = known
            .get(..n)
            .is_some_and(|k| k[..len] == *data && k[len..].iter().all(|&b| b == 0));
        if held {
            return;
        }
        gpu.write(&self.buffer, 0, data);
        if known.len() < n {
            known.resize(n, 0);
        }
        known[..len].copy_from_slice(data);
        known[len..n].fill(0);
        #[cfg(test)]
        self.queued
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// MAP_READ buffers for results on their way back to the host, lent one per queued pass and
/// given back once read, so that passes queued together never share one. Keeps the two largest.
pub struct ReadBack {
    label: &'static str,
    free: Mutex<Vec<wgpu::Buffer>>,
}

impl ReadBack {
    pub fn new(label: &'static str) -> ReadBack {
        ReadBack {
            label,
            free: Mutex::new(Vec::new()),
        }
    }

    /// A buffer of at least `size` bytes, kept or made.
    pub fn take(&self, gpu: &Gpu, size: u64) -> wgpu::Buffer {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        match free.iter().position(|b| b.size() >= size) {
            Some(i) => free.swap_remove(i),
            None => gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(self.label),
                size: size.max(4),
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
        }
    }

    /// Gives a buffer back once read.
    pub fn give(&self, b: wgpu::Buffer) {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        free.push(b);
        free.sort_by_key(|b| std::cmp::Reverse(b.size()));
        free.truncate(2);
    }

    /// Reads `size` bytes of a buffer it lent, filled by submission `after`, and takes the
    /// buffer back.
    pub async fn read(
        &self,
        gpu: &Gpu,
        b: wgpu::Buffer,
        size: u64,
        after: wgpu::SubmissionIndex,
    ) -> Result<Vec<u8>> {
        let bytes = map_read(gpu, &b, size, after).await?;
        self.give(b);
        Ok(bytes)
    }
}

/// Maps a MAP_READ buffer and copies its contents out. Natively the GPU is polled until
/// submission `after` (the one that fills the buffer, not work queued after it) is done, unless
/// the host application polls the device itself (`Gpu::set_host_polls`); in the browser the
/// future resolves when the event loop delivers the map.
pub async fn map_read(
    gpu: &Gpu,
    staging: &wgpu::Buffer,
    size: u64,
    after: wgpu::SubmissionIndex,
) -> Result<Vec<u8>> {
    let slice = staging.slice(..size);
    let done = MapDone::default();
    let signal = done.clone();
    slice.map_async(wgpu::MapMode::Read, move |r| signal.finish(r));
    // Natively this runs the callback; on the web it does nothing and the await yields instead.
    if !gpu.host_polls() {
        gpu.wait_for(after)?;
    }
    done.await
        .map_err(|e| Error::Device(format!("read-back failed: {e}")))?;
    let out = slice
        .get_mapped_range()
        .map_err(|e| Error::Device(format!("read-back mapping failed: {e}")))?
        .to_vec();
    staging.unmap();
    Ok(out)
}

/// A one-shot future for a buffer map: the callback stores the result and wakes the waiter.
#[derive(Clone, Default)]
struct MapDone(Arc<Mutex<MapState>>);

#[derive(Default)]
struct MapState {
    result: Option<std::result::Result<(), wgpu::BufferAsyncError>>,
    waker: Option<Waker>,
}

impl MapDone {
    fn finish(&self, r: std::result::Result<(), wgpu::BufferAsyncError>) {
        if let Ok(mut st) = self.0.lock() {
            st.result = Some(r);
            if let Some(w) = st.waker.take() {
                w.wake();
            }
        }
    }
}

impl Future for MapDone {
    type Output = std::result::Result<(), wgpu::BufferAsyncError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Ok(mut st) = self.0.lock() else {
            return Poll::Ready(Err(wgpu::BufferAsyncError));
        };
        match st.result.take() {
            Some(r) => Poll::Ready(r),
            None => {
                st.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::*;
    use std::sync::atomic::Ordering::Relaxed;

    gpu_test!(upload_skips_only_bytes_the_buffer_holds);
    async fn upload_skips_only_bytes_the_buffer_holds() {
        let mut rng = seeded("upload");
        for gpu in gpus().await {
            let up = Upload::new(gpu.storage("upload", 64).unwrap());
            // What the buffer holds (zeroed at creation), and which bytes a write has set.
            let mut held = vec![0u8; 64];
            let mut set = [false; 64];
            let (mut copies, mut last) = (0, Vec::new());
            for _ in 0..40 {
                // Half the writes repeat a prefix of the last one; the rest are new bytes.
                let data: Vec<u8> = if !last.is_empty() && rng.below(2) == 0 {
                    last[..4 * (1 + rng.below(last.len() as u64 / 4) as usize)].to_vec()
                } else {
                    let n = 4 * (1 + rng.below(4) as usize);
                    (0..n).map(|_| rng.below(3) as u8).collect()
                };
                if (0..data.len()).any(|i| !set[i] || held[i] != data[i]) {
                    copies += 1;
                }
                held[..data.len()].copy_from_slice(&data);
                set[..data.len()].fill(true);
                up.write(gpu, &data);
                assert_eq!(gpu.read(&up.buffer, 64).await.unwrap(), held);
                last = data;
            }
            assert!(copies < 40);
            assert_eq!(up.queued.load(Relaxed), copies);
        }
    }
}
