//! The global allocator: mimalloc, called the way its fast paths expect.
//!
//! A proxy allocates and frees on every request (headers, buffers, futures), and glibc's
//! allocator spent about a quarter of all instructions per request (callgrind), hence mimalloc.
//! Its v2 line, not the crate's default v3: the same instructions per request, but 2–4% less
//! CPU time per request in the same windows (`loadtest/ab.sh`), its blocks warmer in the cache.
//! The `mimalloc` crate passes every Rust allocation to `mi_malloc_aligned`, whose fast path
//! only covers blocks under 1 KiB; larger ones (header buffers, boxed futures, header maps:
//! about 21 of the ~95 allocations of a proxied request) take its generic aligned path, most
//! of them over-allocating by the alignment to align by hand. Every mimalloc block is at least
//! word-aligned, so an allocation that needs no more than that goes to plain `mi_malloc`,
//! and only stricter alignments (tokio's cache-padded task cells, for one) take the aligned API.
//!
//! The only `unsafe` in the workspace: `GlobalAlloc` is an unsafe trait by definition.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// The alignment every mimalloc block has: its size classes are whole machine words.
const WORD: usize = std::mem::size_of::<usize>();

pub struct Allocator;

unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= WORD {
            mi::mi_malloc(layout.size()) as *mut u8
        } else {
            mi::mi_malloc_aligned(layout.size(), layout.align()) as *mut u8
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= WORD {
            mi::mi_zalloc(layout.size()) as *mut u8
        } else {
            mi::mi_zalloc_aligned(layout.size(), layout.align()) as *mut u8
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi::mi_free(ptr as *mut c_void);
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= WORD {
            mi::mi_realloc(ptr as *mut c_void, new_size) as *mut u8
        } else {
            mi::mi_realloc_aligned(ptr as *mut c_void, new_size, layout.align()) as *mut u8
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_block_has_the_alignment_its_layout_asks_for() {
        let a = Allocator;
        for align in [1, 2, 4, 8, 16, 64, 128, 4096] {
            for size in [1, 7, 8, 24, 100, 1000, 1024, 4096, 10_000, 100_000] {
                let layout = Layout::from_size_align(size, align).unwrap();
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "alloc size {size} align {align}");
                    p.write_bytes(0xab, size);
                    let grown = a.realloc(p, layout, size * 3);
                    assert_eq!(
                        grown as usize % align,
                        0,
                        "realloc size {size} align {align}"
                    );
                    assert_eq!(*grown.add(size - 1), 0xab, "realloc keeps the contents");
                    a.dealloc(grown, Layout::from_size_align(size * 3, align).unwrap());
                    let z = a.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0, "zeroed size {size} align {align}");
                    assert!((0..size).all(|i| *z.add(i) == 0));
                    a.dealloc(z, layout);
                }
            }
        }
    }
}
