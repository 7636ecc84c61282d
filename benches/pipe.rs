//! Is `vmsplice` worth it on the receiver's last hop? `fjord-recv` hands
//! verified bytes to `zfs recv` through a pipe: `write` copies them into
//! the pipe and `zfs recv` copies them out again with `read`; `vmsplice`
//! lends the pages to the pipe instead (one copy fewer), but the pages
//! must then stay untouched until the reader has taken them, which a
//! `Bytes` freed after the call does not promise. This measures what the
//! saved copy is worth against a reader that, like `zfs recv`, `read`s
//! into its own buffer.
//!
//! Run: `cargo bench --bench pipe` (figures land in target/criterion).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const CHUNK: usize = 1 << 20;
const TOTAL: usize = 256 << 20;

fn pipe() -> (std::fs::File, std::fs::File) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills both descriptors on success, which we then own.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(r, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: fresh descriptors from pipe2, owned once.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // 1 MiB, as large as an unprivileged process may ask: fewer wakeups.
    // SAFETY: fcntl on a descriptor we own.
    unsafe { libc::fcntl(wr.as_raw_fd(), libc::F_SETPIPE_SZ, CHUNK as libc::c_int) };
    (rd.into(), wr.into())
}

/// A reader like `zfs recv`: `read` into its own 128 KiB buffer.
fn reader(mut rd: std::fs::File) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 128 << 10];
        let mut n = 0;
        loop {
            match rd.read(&mut buf) {
                Ok(0) => return n,
                Ok(k) => n += k,
                Err(e) => panic!("read: {e}"),
            }
        }
    })
}

fn vmsplice_all(wr: &std::fs::File, mut data: &[u8]) {
    while !data.is_empty() {
        let iov = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        // SAFETY: the iovec points into `data`, which the caller keeps
        // alive and unmodified until the reader has drained the pipe.
        let n = unsafe { libc::vmsplice(wr.as_raw_fd(), &iov, 1, 0) };
        assert!(n > 0, "vmsplice: {}", std::io::Error::last_os_error());
        data = &data[n as usize..];
    }
}

fn bench(c: &mut Criterion) {
    // every chunk distinct and alive for the whole run: vmsplice's pages
    // are never reused before the reader took them
    let chunks: Vec<Vec<u8>> = (0..TOTAL / CHUNK)
        .map(|i| vec![(i % 251) as u8; CHUNK])
        .collect();
    let mut g = c.benchmark_group("pipe_to_reader");
    g.throughput(Throughput::Bytes(TOTAL as u64));
    g.sample_size(10);
    g.bench_function("write", |b| {
        b.iter(|| {
            let (rd, mut wr) = pipe();
            let r = reader(rd);
            for c in &chunks {
                wr.write_all(c).expect("write");
            }
            drop(wr);
            assert_eq!(r.join().expect("reader"), TOTAL);
        })
    });
    g.bench_function("vmsplice", |b| {
        b.iter(|| {
            let (rd, wr) = pipe();
            let r = reader(rd);
            for c in &chunks {
                vmsplice_all(&wr, c);
            }
            drop(wr);
            assert_eq!(r.join().expect("reader"), TOTAL);
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
