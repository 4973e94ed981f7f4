//! Backing loaded model weights with 2 MiB pages.
//!
//! Decoding reads every weight once per token (~110 MB for the default model). With 4 KiB pages
//! that walk misses the TLB constantly; ONNX Runtime allocates its (pre-packed) weights with
//! `malloc`, which maps them with small pages, and this machine's transparent huge pages are
//! `madvise`-only. After the sessions are built, [`back_weights_with_huge_pages`] finds the large,
//! fully populated, anonymous mappings of the process (the weights) in `/proc/self/smaps` and asks
//! the kernel to collapse them into huge pages (`MADV_HUGEPAGE` + `MADV_COLLAPSE`, Linux 6.1+).
//! Contents do not change; where the kernel cannot do it the pages simply stay small.
//! Mappings that are mostly unpopulated (thread stacks, reserved arenas) are left alone, so the
//! resident size does not grow.

use std::ops::Range;

/// Size of a transparent huge page on x86-64 and aarch64 (4 KiB base pages).
pub const HUGE_PAGE: usize = 2 << 20;

/// What [`back_weights_with_huge_pages`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HugePageReport {
    /// Huge-page-aligned ranges asked for.
    pub ranges: usize,
    /// Bytes in those ranges.
    pub bytes: usize,
    /// Bytes the kernel collapsed into huge pages.
    pub collapsed_bytes: usize,
}

/// The huge-page-aligned parts of the anonymous read-write mappings in `smaps` (the text of
/// `/proc/self/smaps`) that span at least `min_bytes` and are at least 90% resident: the ranges
/// worth collapsing. Pure, for tests.
pub fn candidate_ranges(smaps: &str, min_bytes: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut current: Option<(Range<usize>, bool)> = None;
    let mut push = |m: Option<(Range<usize>, bool)>, rss_kb: Option<usize>| {
        let (Some((range, anon_rw)), Some(rss_kb)) = (m, rss_kb) else {
            return;
        };
        let size = range.end - range.start;
        if !anon_rw || size < min_bytes || rss_kb.saturating_mul(1024) < size / 10 * 9 {
            return;
        }
        let start = range.start.next_multiple_of(HUGE_PAGE);
        let end = range.end / HUGE_PAGE * HUGE_PAGE;
        if end > start {
            out.push(start..end);
        }
    };
    let mut rss_kb = None;
    for line in smaps.lines() {
        if let Some(header) = parse_header(line) {
            push(current.take(), rss_kb.take());
            current = Some(header);
        } else if let Some(v) = line.strip_prefix("Rss:") {
            rss_kb = v.trim().trim_end_matches("kB").trim().parse().ok();
        }
    }
    push(current, rss_kb);
    out
}

/// `start-end perms offset dev inode [path]` → the range and whether it is an anonymous
/// read-write private mapping (no file, not a stack). Other lines → `None`.
fn parse_header(line: &str) -> Option<(Range<usize>, bool)> {
    let mut fields = line.split_whitespace();
    let (start, end) = fields.next()?.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    let perms = fields.next()?;
    let _offset = fields.next()?;
    let dev = fields.next()?;
    let inode = fields.next()?;
    if perms.len() != 4 || !dev.contains(':') || end < start {
        return None;
    }
    let path = fields.next().unwrap_or("");
    let anon_rw = perms.starts_with("rw")
        && perms.ends_with('p')
        && inode == "0"
        && (path.is_empty() || path == "[heap]");
    Some((start..end, anon_rw))
}

/// Collapses the large anonymous mappings of this process into huge pages (see the module
/// documentation). Call once after the weights are loaded. Linux only; elsewhere, or when
/// `/proc/self/smaps` cannot be read, it does nothing.
pub fn back_weights_with_huge_pages(min_bytes: usize) -> HugePageReport {
    let mut report = HugePageReport::default();
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return report;
    };
    for range in candidate_ranges(&smaps, min_bytes) {
        let len = range.end - range.start;
        report.ranges += 1;
        report.bytes += len;
        if collapse(range.start, len) {
            report.collapsed_bytes += len;
        }
    }
    report
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn collapse(start: usize, len: usize) -> bool {
    let addr = start as *mut libc::c_void;
    // SAFETY: `start..start + len` lies inside a mapping of this process that was listed in
    // /proc/self/smaps just before (huge-page aligned, within its bounds). MADV_HUGEPAGE and
    // MADV_COLLAPSE change how the range is backed, never its contents, and fail harmlessly
    // (EINVAL, ENOMEM, EAGAIN) if the mapping changed meanwhile.
    unsafe {
        libc::madvise(addr, len, libc::MADV_HUGEPAGE);
        libc::madvise(addr, len, libc::MADV_COLLAPSE) == 0
    }
}

#[cfg(not(target_os = "linux"))]
fn collapse(_start: usize, _len: usize) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    fn mapping(
        start: usize,
        end: usize,
        perms: &str,
        inode: &str,
        path: &str,
        rss_kb: usize,
    ) -> String {
        format!(
            "{start:x}-{end:x} {perms} 00000000 00:00 {inode}          {path}\n\
             Size:           {} kB\nRss:            {rss_kb} kB\nPss:            {rss_kb} kB\n\
             VmFlags: rd wr mr mw me ac\n",
            (end - start) / 1024
        )
    }

    #[test]
    fn keeps_large_resident_anonymous_mappings_aligned_to_huge_pages() {
        let base = 0x7f00_0000_0000usize;
        let smaps = [
            // 10 MiB starting 4 KiB after a huge-page boundary, fully resident: aligned inside.
            mapping(
                base + 4096,
                base + 4096 + 10 * MIB,
                "rw-p",
                "0",
                "",
                10 * 1024,
            ),
            // The heap counts too.
            mapping(
                base + 64 * MIB,
                base + 72 * MIB,
                "rw-p",
                "0",
                "[heap]",
                8 * 1024,
            ),
        ]
        .concat();
        assert_eq!(
            candidate_ranges(&smaps, 4 * MIB),
            vec![
                base + 2 * MIB..base + 10 * MIB,
                base + 64 * MIB..base + 72 * MIB
            ]
        );
    }

    #[test]
    fn skips_files_stacks_small_sparse_and_read_only_mappings() {
        let base = 0x7f00_0000_0000usize;
        let smaps = [
            mapping(base, base + 8 * MIB, "r--p", "0", "", 8 * 1024),
            mapping(
                base,
                base + 8 * MIB,
                "rw-p",
                "1234",
                "/usr/lib/libonnxruntime.so",
                8 * 1024,
            ),
            mapping(base, base + 8 * MIB, "rw-p", "0", "[stack]", 8 * 1024),
            mapping(base, base + 8 * MIB, "rw-s", "0", "", 8 * 1024),
            // A reserved thread stack: mostly not resident.
            mapping(base, base + 8 * MIB, "rw-p", "0", "", 64),
            // Too small.
            mapping(base, base + 2 * MIB, "rw-p", "0", "", 2 * 1024),
            // Large enough but holds no whole aligned huge page.
            mapping(
                base + 4096,
                base + 4 * MIB - 4096,
                "rw-p",
                "0",
                "",
                4 * 1024,
            ),
        ]
        .concat();
        assert_eq!(
            candidate_ranges(&smaps, 3 * MIB),
            Vec::<Range<usize>>::new()
        );
    }

    #[test]
    fn a_mapping_that_ends_before_it_starts_is_not_one() {
        assert!(candidate_ranges("ffff-0000 rw-p 0 00:00 0\nRss: 1 kB\n", 0).is_empty());
    }

    proptest::proptest! {
        /// Any text: no panic, and every range is huge-page aligned and non-empty.
        #[test]
        fn arbitrary_text_gives_aligned_ranges(text in "([0-9a-f]{1,12}-[0-9a-f]{1,12} (rw-p|r--p) 0 00:00 0( \\[heap\\])?\n(Rss: [0-9]{1,9} kB\n)?|.{0,40}\n){0,12}") {
            for r in candidate_ranges(&text, 0) {
                proptest::prop_assert!(r.start % HUGE_PAGE == 0 && r.end % HUGE_PAGE == 0 && r.end > r.start);
            }
        }
    }

    #[test]
    fn collapsing_a_resident_buffer_keeps_its_contents() {
        // 64 MiB is above glibc's largest mmap threshold (32 MiB), so the buffer is a mapping
        // of its own, fully resident once written.
        let data: Vec<u8> = (0..64 * MIB).map(|i| (i * 7 % 251) as u8).collect();
        let report = back_weights_with_huge_pages(32 * MIB);
        assert!(report.bytes >= 60 * MIB, "{report:?}");
        assert!(
            data.iter()
                .enumerate()
                .all(|(i, &b)| b == (i * 7 % 251) as u8)
        );
    }
}
