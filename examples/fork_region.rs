//! Makes a region, forks workers, and shows their writes in the parent.
//!
//! `cargo run --example fork_region -- [WORKERS]`

use shmzone::{Backend, Region};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let workers: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(4);
    let region = Region::new(workers * 4096)?;
    println!(
        "region: {} bytes at {:p}, backend {} (available: {:?})",
        region.len(),
        region.as_ptr(),
        region.backend(),
        Backend::available()
    );
    let mut pids = Vec::new();
    for w in 0..workers {
        // SAFETY: the child only writes into the shared region and _exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let msg = format!("hello from worker {w}, pid {}", std::process::id());
            // SAFETY: each worker writes its own 4 KiB slot of the region.
            unsafe {
                let slot = region.as_ptr().add(w * 4096);
                std::ptr::copy_nonoverlapping(msg.as_ptr(), slot, msg.len());
                libc::_exit(0);
            }
        }
        pids.push(pid);
    }
    for pid in pids {
        let mut status = 0;
        // SAFETY: waits for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
    }
    for w in 0..workers {
        // SAFETY: reads back each worker's slot; the children have exited.
        let slot = unsafe { std::slice::from_raw_parts(region.as_ptr().add(w * 4096), 4096) };
        let end = slot.iter().position(|&b| b == 0).unwrap_or(slot.len());
        println!("slot {w}: {}", String::from_utf8_lossy(&slot[..end]));
    }
    Ok(())
}
