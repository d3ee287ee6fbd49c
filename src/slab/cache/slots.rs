//! The per-thread caches' slow paths, all under the pool lock in
//! journaled sections: syncing with the epoch, claiming and releasing
//! slots, refilling and flushing magazines, giving memory back under
//! pressure, reclaiming dead owners' caches, turning caching off and on,
//! and the caches' part of stats and `check()`.

use super::*;

impl Pool {
    /// After the epoch changed: flush everything (lock), then follow it:
    /// keep the slot (caching on) or release it (off). Whether the slot is
    /// still usable.
    pub(super) fn sync_epoch(&self, slot: NonNull<SlotHead>) -> bool {
        let base = self.base.as_ptr() as usize;
        let Some(g) = self.lock_op(FREE_BUDGET) else {
            return false;
        };
        self.flush_all(slot);
        // SAFETY: our slot (token checked by the caller).
        let sh = unsafe { slot.as_ref() };
        let now = self.dir().epoch.load(Ordering::Acquire);
        if now & 1 == 1 {
            if let Some(i) = self.slot_index(slot) {
                self.release_slot(i);
            }
            drop(g);
            self.forget_held(base);
            return false;
        }
        sh.follow(now);
        drop(g);
        true
    }

    /// Gives every magazine of `slot` back to the slab (lock held).
    fn flush_all(&self, slot: NonNull<SlotHead>) {
        for c in 0..NMAGS {
            self.flush_mag(slot, c, 0);
        }
    }

    /// The first free directory slot (lock held).
    fn free_slot(&self) -> Option<usize> {
        (0..NSLOTS).find(|&i| {
            // SAFETY: i < NSLOTS, lock held.
            unsafe { self.dir_slot(i).read() }.pid == 0
        })
    }

    /// The directory index of our slot body.
    fn slot_index(&self, slot: NonNull<SlotHead>) -> Option<usize> {
        let off =
            (slot.as_ptr() as usize).wrapping_sub(self.base.as_ptr() as usize + self.start_off);
        let page = (off / SLAB_PAGE) as u32;
        (0..NSLOTS).find(|&i| {
            // SAFETY: i < NSLOTS; read under the lock (callers).
            let d = unsafe { self.dir_slot(i).read() };
            d.pid != 0 && d.page == page
        })
    }

    /// Claims a free slot (or one of a dead owner) for this thread.
    #[cold]
    pub(super) fn claim(&self) -> Option<NonNull<SlotHead>> {
        let base = self.base.as_ptr() as usize;
        let pid = current_pid();
        let tid = current_tid();
        let g = self.lock_op(ALLOC_BUDGET)?;
        let epoch = self.dir().epoch.load(Ordering::Acquire);
        let refused = Held {
            base,
            slot: usize::MAX,
            token: epoch,
            pid,
        };
        if epoch & 1 == 1 {
            return None;
        }
        if let Some(i) = self.free_slot() {
            return self.claim_at(i, pid, tid, g);
        }
        // All taken: return dead threads' slots, then look again.
        drop(g);
        self.reclaim_caches();
        let g = self.lock_op(ALLOC_BUDGET)?;
        let Some(i) = self.free_slot() else {
            drop(g);
            self.remember(refused);
            return None;
        };
        self.claim_at(i, pid, tid, g)
    }

    fn claim_at(
        &self,
        i: usize,
        pid: u32,
        tid: u32,
        g: crate::shmtx::ShmGuard<'_>,
    ) -> Option<NonNull<SlotHead>> {
        let base = self.base.as_ptr() as usize;
        // SAFETY: `g` holds the lock until after this borrow ends.
        let mut core = unsafe { self.core() };
        let Some(off) = core.alloc_run_checked(BODY_PAGES, BODY, self.npages as usize) else {
            self.journal.commit();
            drop(g);
            self.remember(Held {
                base,
                slot: usize::MAX,
                token: self.dir().epoch.load(Ordering::Relaxed),
                pid,
            });
            return None;
        };
        core.mark_internal((off >> PAGE_SHIFT) as u32, true);
        // Not a user's request: keep the run counters to real requests.
        crate::slab::layout::uncount(&mut core.st.page_reqs);
        core.st.run_bytes_requested = core.st.run_bytes_requested.wrapping_sub(BODY as u64);
        core.st.run_bytes = core
            .st
            .run_bytes
            .wrapping_sub((BODY_PAGES * SLAB_PAGE) as u64);
        let nonce = self.dir().nonce.load(Ordering::Relaxed);
        let tok = token(nonce, pid, tid, i);
        let epoch = self.dir().epoch.load(Ordering::Relaxed);
        let body = self.data_ptr(off).cast::<SlotHead>();
        // SAFETY: a fresh run of BODY_PAGES pages, ours under the lock (a
        // rollback gives it back whole, so its bytes need no record).
        unsafe {
            body.as_ptr().write(SlotHead {
                token: AtomicU64::new(tok),
                key: AtomicU64::new(epoch ^ tok),
                _pad: [0; 6],
            });
        }
        for c in 0..NMAGS {
            let m = self.mag(body, c);
            m.word.store(0, Ordering::Relaxed);
            m.reqs.store(0, Ordering::Relaxed);
            m.bytes.store(0, Ordering::Relaxed);
            m.cap.store(mag_cap(c, self.len), Ordering::Relaxed);
            for e in &m.e {
                e.store(EMPTY, Ordering::Relaxed);
            }
        }
        let ds = self.dir_slot(i);
        core.save_words::<2>(ds.cast::<u64>());
        killpoint::point();
        // SAFETY: lock held; recorded above.
        unsafe {
            ds.write(DirSlot {
                pid,
                tid,
                page: (off >> PAGE_SHIFT) as u32,
                npages: BODY_PAGES as u32,
            })
        };
        killpoint::point();
        self.journal.commit();
        self.dir().claims.fetch_add(1, Ordering::Relaxed);
        drop(g);
        let h = Held {
            base,
            slot: body.as_ptr() as usize - base,
            token: tok,
            pid,
        };
        self.remember(h);
        Some(body)
    }

    /// Frees slot `i`'s body and clears its directory entry (lock held;
    /// its magazines already flushed).
    fn release_slot(&self, i: usize) {
        // SAFETY: i < NSLOTS; lock held.
        let ds = unsafe { self.dir_slot(i).read() };
        if !self.journal.fits(FREE_BUDGET + 4) {
            self.journal.commit();
        }
        // SAFETY: lock held (callers).
        let mut core = unsafe { self.core() };
        if self.body_run_ok(&ds) {
            core.mark_internal(ds.page, false);
            if let Err(e) = core.free_at(ds.page, 0) {
                log::error!(
                    "zone \"{}\": cache slot {i}: its body at page {} could not be freed: {e}",
                    self.name(),
                    ds.page
                );
            }
        }
        core.save_words::<2>(self.dir_slot(i).cast::<u64>());
        killpoint::point();
        // SAFETY: lock held; recorded above.
        unsafe { self.dir_slot(i).write(DirSlot::FREE) };
        self.journal.commit();
    }

    /// Whether a directory entry names an allocated run of its length.
    fn body_run_ok(&self, ds: &DirSlot) -> bool {
        // SAFETY: lock held by callers.
        let (_, d, _) = unsafe { self.view() };
        ds.npages as usize == BODY_PAGES
            && (ds.page as usize) + BODY_PAGES <= d.len()
            && d[ds.page as usize].prev.tag() == Link::RUN
            && d[ds.page as usize].slab == BODY_PAGES as u64
            && d[ds.page as usize].next == INTERNAL
    }

    /// The slot body of directory entry `ds`, if its run and token are right.
    fn body_of(&self, i: usize, ds: &DirSlot) -> Option<NonNull<SlotHead>> {
        if !self.body_run_ok(ds) {
            return None;
        }
        let body = self
            .data_ptr((ds.page as usize) << PAGE_SHIFT)
            .cast::<SlotHead>();
        let nonce = self.dir().nonce.load(Ordering::Relaxed);
        // SAFETY: an allocated run of BODY_PAGES pages inside the pool.
        let tok = unsafe { body.as_ref() }.token.load(Ordering::Relaxed);
        (tok == token(nonce, ds.pid, ds.tid, i)).then_some(body)
    }

    /// Gives magazine `c` of `slot` back to the slab down to `target`
    /// chunks (lock held by the caller), in sections that fit the journal.
    /// Entries that fail their check are dropped (logged).
    fn flush_mag(&self, slot: NonNull<SlotHead>, c: usize, target: u32) {
        let m = self.mag(slot, c);
        let cap = m.cap.load(Ordering::Relaxed).min(MAG as u32);
        let w = m.word.load(Ordering::Acquire);
        let mut n = (w as u32).min(cap);
        let mut gen = w >> 32;
        let mut bad = 0u32;
        let mut rounds = 0;
        while n > target || (w as u32) > cap {
            rounds += 1;
            if rounds > MAG + 2 {
                break;
            }
            // SAFETY: the caller holds the lock.
            let mut core = unsafe { self.core() };
            core.save_words::<1>(m.word.as_ptr().cast_const());
            let from = n;
            while n > target && self.journal.fits(FREE_BUDGET + 2) {
                n -= 1;
                let e = m.e[n as usize].load(Ordering::Relaxed);
                let off = (e as usize) << 3;
                match self.chunk_at(off, c) {
                    Some((idx, in_page)) => {
                        if core.free_at(idx, in_page).is_err() {
                            bad += 1;
                        }
                    }
                    None => bad += 1,
                }
                killpoint::point();
            }
            gen += 1;
            m.word.store(gen << 32 | n as u64, Ordering::Release);
            killpoint::point();
            self.journal.commit();
            // Only now (a rollback restores the count, not the entries):
            // the entries above the count are EMPTY again.
            for e in &m.e[n as usize..from as usize] {
                e.store(EMPTY, Ordering::Relaxed);
            }
            if n <= target {
                break;
            }
        }
        if bad != 0 {
            log::error!(
                "zone \"{}\": {bad} bad entries dropped from a {}-byte cache (not chunks of \
                 the class in use)",
                self.name(),
                mag_size(c)
            );
        }
    }

    /// Takes up to `want` blocks from `take` (while the journal has room
    /// for another): the first is the caller's (`got`), the others go on
    /// top of magazine `m` (entries only: the caller stores the count).
    /// How many were taken.
    fn refill_from(
        &self,
        m: &Mag,
        n: &mut u32,
        got: &mut Option<usize>,
        want: u32,
        mut take: impl FnMut() -> Option<usize>,
    ) -> u32 {
        let mut k = 0;
        while k < want && self.journal.fits(ALLOC_BUDGET + 2) {
            let Some(off) = take() else {
                break;
            };
            killpoint::point();
            if got.is_none() {
                *got = Some(off);
            } else {
                m.e[*n as usize].store((off >> 3) as u32, Ordering::Relaxed);
                *n += 1;
            }
            k += 1;
        }
        k
    }

    /// The slow part of a cached allocation: the magazine was empty (or its
    /// top entry bad). Under the lock: drop bad entries, refill half the
    /// magazine from the slab, hand out one chunk.
    #[cold]
    #[inline(never)]
    pub(crate) fn alloc_refill(
        &self,
        slot: NonNull<SlotHead>,
        c: usize,
        size: usize,
    ) -> Option<NonNull<u8>> {
        let m = self.mag(slot, c);
        let cap = m.cap.load(Ordering::Relaxed).min(MAG as u32);
        let g = self.lock_op(ALLOC_BUDGET)?;
        // SAFETY: `g` holds the lock until after this borrow ends.
        let mut core = unsafe { self.core() };
        let w = m.word.load(Ordering::Relaxed);
        let mut n = (w as u32).min(cap);
        let from = n;
        core.save_words::<1>(m.word.as_ptr().cast_const());
        // Bad entries on top: dropped.
        let mut got = None;
        let mut bad = 0;
        while n > 0 {
            n -= 1;
            let off = (m.e[n as usize].load(Ordering::Relaxed) as usize) << 3;
            if self.chunk_at(off, c).is_some() {
                got = Some(off);
                break;
            }
            bad += 1;
        }
        if got.is_none() && c >= NCLASSES {
            let pages = c - NCLASSES + 1;
            let want = (cap / 2).max(1);
            let before = (
                core.st.page_reqs,
                core.st.page_fails,
                core.st.run_bytes_requested,
                core.st.run_bytes,
            );
            let npages = self.npages as usize;
            self.refill_from(m, &mut n, &mut got, want, || {
                core.alloc_run_checked(pages, pages * SLAB_PAGE, npages)
            });
            // Runs moved to a cache are no user's requests (the cache
            // counts the one handed out below).
            (
                core.st.page_reqs,
                core.st.page_fails,
                core.st.run_bytes_requested,
                core.st.run_bytes,
            ) = before;
        }
        if got.is_none() && c < NCLASSES {
            let want = (cap / 2).max(1);
            let cs = core.st.classes[c];
            let k = self.refill_from(m, &mut n, &mut got, want, || {
                core.alloc_chunk(c, mag_size(c))
            });
            // Chunks moved to a cache are the slab's requests (its `reqs`
            // counts them), not the user's: counted apart, no bytes asked.
            let st = &mut core.st.classes[c];
            st.to_caches = st.to_caches.wrapping_add(k as u64);
            st.bytes_requested = cs.bytes_requested;
            st.fails = cs.fails;
        }
        m.word
            .store(((w >> 32) + 1) << 32 | n as u64, Ordering::Release);
        killpoint::point();
        self.journal.commit();
        // After the commit (a rollback restores the count, not the
        // entries): the entries above the count are EMPTY again.
        for e in m.e.iter().take(from as usize).skip(n as usize) {
            e.store(EMPTY, Ordering::Relaxed);
        }
        drop(g);
        if bad != 0 {
            log::error!(
                "zone \"{}\": {bad} bad entries dropped from a {}-byte cache",
                self.name(),
                mag_size(c)
            );
        }
        match got {
            Some(off) => {
                m.count(size);
                Some(self.data_ptr(off))
            }
            None => {
                // No memory: give caches back, then try once more uncached.
                self.relieve();
                let r = self.alloc_plain(size);
                if r.is_none() {
                    self.log_nomem(size);
                }
                r
            }
        }
    }

    /// The slow part of a cached free: the magazine is full. Flush it to
    /// half (lock), then push.
    #[cold]
    #[inline(never)]
    pub(crate) fn free_flush(
        &self,
        slot: NonNull<SlotHead>,
        c: usize,
        idx: u32,
        in_page: usize,
    ) -> Result<(), FreeError> {
        let cap = self.mag(slot, c).cap.load(Ordering::Relaxed);
        match self.lock_op(FREE_BUDGET) {
            Some(g) => {
                self.flush_mag(slot, c, cap / 2);
                drop(g);
            }
            None => return Err(self.refused_free()),
        }
        match self.cache_push(slot, idx, in_page) {
            Push::Done => Ok(()),
            Push::Twice(e) => Err(e),
            Push::Full(_) | Push::No => self.free_uncached(idx, in_page),
        }
    }

    /// Memory ran short: flush this thread's cache, return dead owners'
    /// caches, and ask every live cache to flush on its next call.
    #[cold]
    pub(crate) fn relieve(&self) {
        if !self.cache_ok {
            return;
        }
        self.flush_cache();
        self.reclaim_caches();
        // In sync with the epoch after flush_cache, if it has a slot.
        let mine = self.my_slot_fast();
        let g = self.lock();
        if self.cached_elsewhere(mine) {
            let e = self.dir().epoch.load(Ordering::Relaxed).wrapping_add(2);
            self.dir().epoch.store(e, Ordering::Release);
            self.dir().pressure.fetch_add(1, Ordering::Relaxed);
            // Our own cache (just flushed) follows the new epoch at once.
            if let Some(slot) = mine {
                // SAFETY: our slot, checked by my_slot_fast.
                unsafe { slot.as_ref() }.follow(e);
            }
        }
        drop(g);
    }

    /// Whether a slot other than `mine` holds chunks (lock held; counts
    /// read racily).
    fn cached_elsewhere(&self, mine: Option<NonNull<SlotHead>>) -> bool {
        let mut any = false;
        for i in 0..NSLOTS {
            // SAFETY: i < NSLOTS, lock held.
            let ds = unsafe { self.dir_slot(i).read() };
            if ds.pid == 0 {
                continue;
            }
            let Some(body) = self.body_of(i, &ds) else {
                continue;
            };
            if Some(body) == mine {
                continue;
            }
            any |= (0..NMAGS).any(|c| self.mag(body, c).word.load(Ordering::Relaxed) as u32 != 0);
        }
        any
    }

    /// Gives every chunk in the calling thread's cache back to the slab
    /// (the cache and its slot stay; if caching was turned off meanwhile,
    /// the slot goes too).
    pub fn flush_cache(&self) {
        // Follows the epoch too (a change flushes everything already).
        let Some(slot) = self.my_slot_no_claim() else {
            return;
        };
        if let Some(g) = self.lock_op(FREE_BUDGET) {
            self.flush_all(slot);
            drop(g);
        }
    }

    /// Gives this thread's cache back entirely: its chunks to the slab and
    /// its slot (the next allocation claims one again). For a thread about
    /// to end, or before measuring the pool.
    pub fn release_cache(&self) {
        // Follows the epoch first (caching off: the slot is gone already).
        let Some(slot) = self.my_slot_no_claim() else {
            return;
        };
        self.forget_held(self.base.as_ptr() as usize);
        if let Some(g) = self.lock_op(FREE_BUDGET) {
            self.flush_all(slot);
            if let Some(i) = self.slot_index(slot) {
                self.release_slot(i);
            }
            drop(g);
        }
    }

    /// Returns the caches of threads that no longer run (their chunks go
    /// back to the slab, their slots are freed). Returns how many slots.
    /// The master calls it (through `prefork::recover_zones`) for every
    /// dead worker; any thread calls it when slots run out or memory does.
    pub fn reclaim_caches(&self) -> usize {
        self.reclaim_where(|ds| !thread_alive(ds.pid, ds.tid))
    }

    /// Returns every cache of process `pid`, which must be dead (the
    /// master's recovery of a dead worker). Returns how many slots.
    pub fn reclaim_caches_of(&self, pid: u32) -> usize {
        if pid == 0 {
            return 0;
        }
        if pid_alive(pid) {
            log::warn!(
                "zone \"{}\": reclaim_caches_of({pid}): the process is alive; nothing done",
                self.name()
            );
            return 0;
        }
        self.reclaim_where(|ds| ds.pid == pid)
    }

    fn reclaim_where(&self, dead: impl Fn(&DirSlot) -> bool) -> usize {
        if !self.cache_ok {
            return 0;
        }
        // Cheap when nobody ever had a slot.
        let any = (0..NSLOTS).any(|i| {
            // SAFETY: i < NSLOTS; a racy read of a plain u32 through a
            // pointer, only to skip the lock when every slot is free.
            unsafe { std::ptr::read_volatile(std::ptr::addr_of!((*self.dir_slot(i)).pid)) != 0 }
        });
        if !any {
            return 0;
        }
        let Some(g) = self.lock_op(FREE_BUDGET) else {
            return 0;
        };
        let mut n = 0;
        for i in 0..NSLOTS {
            // SAFETY: i < NSLOTS, lock held.
            let ds = unsafe { self.dir_slot(i).read() };
            if ds.pid == 0 || !dead(&ds) {
                continue;
            }
            if let Some(body) = self.body_of(i, &ds) {
                self.flush_all(body);
            } else {
                log::error!(
                    "zone \"{}\": cache slot {i} of process {} is damaged; its cached chunks \
                     are lost",
                    self.name(),
                    ds.pid
                );
            }
            self.release_slot(i);
            n += 1;
        }
        drop(g);
        if n > 0 {
            self.dir().reclaims.fetch_add(n as u64, Ordering::Relaxed);
            log::info!(
                "zone \"{}\": returned {n} cache(s) of dead threads to the pool",
                self.name()
            );
        }
        n
    }

    /// Turns the per-thread caches of this pool on or off for every
    /// process. Off: each cache gives its chunks back on its owner's next
    /// call and frees its slot. Pools under [`CACHE_MIN_PAGES`] pages never
    /// cache. Caching is on by default.
    pub fn set_cache(&self, on: bool) {
        if !self.cache_ok {
            return;
        }
        let g = self.lock();
        let e = self.dir().epoch.load(Ordering::Relaxed);
        let next = (e.wrapping_add(2) & !1) | (!on) as u64;
        self.dir().epoch.store(next, Ordering::Release);
        drop(g);
        if !on {
            // Our own slot goes at once.
            let _ = self.my_slot();
        }
    }

    /// Whether this pool caches chunks per thread now.
    pub fn cache_enabled(&self) -> bool {
        self.cache_ok && self.dir().epoch.load(Ordering::Relaxed) & 1 == 0
    }

    /// Cached chunks per class (read racily; exact when nobody allocates).
    pub(crate) fn cached_per_class(
        &self,
    ) -> ([u64; NMAGS], [u64; NMAGS], [u64; NMAGS], CacheStats) {
        let mut chunks = [0u64; NMAGS];
        let mut reqs = [0u64; NMAGS];
        let mut bytes = [0u64; NMAGS];
        if !self.cache_ok {
            return (chunks, reqs, bytes, CacheStats::default());
        }
        let dir = self.dir();
        let mut cs = CacheStats {
            enabled: self.cache_enabled(),
            claims: dir.claims.load(Ordering::Relaxed),
            reclaims: dir.reclaims.load(Ordering::Relaxed),
            pressure: dir.pressure.load(Ordering::Relaxed),
            ..CacheStats::default()
        };
        if !self.cache_ok {
            return (chunks, reqs, bytes, cs);
        }
        for i in 0..NSLOTS {
            // SAFETY: i < NSLOTS; callers hold the lock.
            let ds = unsafe { self.dir_slot(i).read() };
            if ds.pid == 0 {
                continue;
            }
            cs.slots += 1;
            cs.pages += ds.npages as usize;
            let Some(body) = self.body_of(i, &ds) else {
                continue;
            };
            for c in 0..NMAGS {
                let m = self.mag(body, c);
                let n = (m.word.load(Ordering::Acquire) as u32).min(MAG as u32) as u64;
                chunks[c] += n;
                // Statistics words: whatever a dead or broken owner left,
                // added without overflow checks.
                reqs[c] = reqs[c].wrapping_add(m.reqs.load(Ordering::Relaxed));
                bytes[c] = bytes[c].wrapping_add(m.bytes.load(Ordering::Relaxed));
                if c < NCLASSES {
                    cs.chunks += n;
                } else {
                    cs.runs += n;
                    cs.run_pages += n as usize * (c - NCLASSES + 1);
                }
                cs.bytes += n * mag_size(c) as u64;
            }
        }
        (chunks, reqs, bytes, cs)
    }

    /// Checks the caches (lock held): every slot's body is an allocated run
    /// with its owner's token, every count within its capacity, every entry
    /// a chunk of its class that is allocated, and no chunk cached twice.
    /// A magazine that changes while it is read (its owner is busy) is
    /// skipped.
    pub(crate) fn check_caches(&self) -> Result<(), &'static str> {
        if !self.cache_ok {
            return Ok(());
        }
        let mut seen: Vec<u32> = Vec::new();
        for i in 0..NSLOTS {
            // SAFETY: i < NSLOTS; lock held.
            let ds = unsafe { self.dir_slot(i).read() };
            if ds.pid == 0 {
                continue;
            }
            if !self.body_run_ok(&ds) {
                return Err("cache slot body is not an allocated run of its size");
            }
            let Some(body) = self.body_of(i, &ds) else {
                return Err("cache slot body does not carry its owner's token");
            };
            for c in 0..NMAGS {
                let m = self.mag(body, c);
                let cap = m.cap.load(Ordering::Relaxed);
                if cap != mag_cap(c, self.len) {
                    return Err("cache magazine capacity is not the pool's");
                }
                'retry: for _ in 0..8 {
                    let w = m.word.load(Ordering::Acquire);
                    let n = w as u32;
                    if n > cap {
                        return Err("cache magazine count is over its capacity");
                    }
                    let mut mine = Vec::with_capacity(n as usize);
                    for k in 0..n as usize {
                        let e = m.e[k].load(Ordering::Relaxed);
                        let ok = self.chunk_at((e as usize) << 3, c).is_some();
                        if m.word.load(Ordering::Acquire) != w {
                            continue 'retry;
                        }
                        if !ok {
                            return Err("cache entry is not an allocated chunk of its class");
                        }
                        mine.push(e);
                    }
                    seen.extend_from_slice(&mine);
                    break;
                }
            }
        }
        seen.sort_unstable();
        if seen.windows(2).any(|w| w[0] == w[1]) {
            return Err("a chunk is cached twice");
        }
        Ok(())
    }

    /// Forgets every slot (the pool is being re-initialised, lock held):
    /// tokens are cleared so that owners notice, and the epoch moves on.
    pub(crate) fn forget_caches(&self) {
        if !self.cache_ok {
            return;
        }
        for i in 0..NSLOTS {
            // SAFETY: i < NSLOTS; lock held.
            let ds = unsafe { self.dir_slot(i).read() };
            if ds.pid != 0 {
                if let Some(body) = self.body_of(i, &ds) {
                    // SAFETY: the body's head, inside the pool.
                    let sh = unsafe { body.as_ref() };
                    sh.token.store(0, Ordering::Relaxed);
                    sh.key.store(0, Ordering::Relaxed);
                }
            }
            // SAFETY: as above.
            unsafe { self.dir_slot(i).write(DirSlot::FREE) };
        }
        let e = self.dir().epoch.load(Ordering::Relaxed);
        self.dir().epoch.store(e.wrapping_add(2), Ordering::Release);
    }
}
