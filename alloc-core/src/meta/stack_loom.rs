//! `loom` model of `meta`'s lock-free block stacks (`stack.rs`): the shipped
//! `TaggedStack` code over a few model blocks, whose first word is the link as in
//! metadata memory. The model's blocks lie in no metadata arena, so the stack names them
//! by address (`AddressNames`) where `meta`'s name them by arena number and offset
//! (`ArenaNames`, plain arithmetic outside the protocol). Each block carries an
//! ownership flag outside the model (set when a pop hands the block out, cleared before
//! a push gives it back): a block handed out while it is still owned, or one lost or
//! left on the stack twice at the end, fails the execution.
//!
//! Scenarios, each a stack of three blocks `A -> B -> C` to start with:
//! - `Aba`: one thread pops once; the other pops twice and pushes the first block back
//!   (the interleaving that brings the same block back on top with a new link).
//! - `Refill`: one thread pops twice; the other pushes a chain of two fresh blocks, as
//!   `Meta::refill` does after carving a chunk, and pops one.
//!
//! The must-fail twin runs `Aba` over a stack whose tag never changes (`TaggedStack<_, false>`):
//! loom finds the execution where the first thread's CAS succeeds on a stale link and a
//! block is handed out twice.
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p rangealloc-core --release --lib loom`.

use super::stack::{AddressNames, TaggedStack};
use crate::sync::atomic::AtomicUsize;
use loom::sync::Arc;
use loom::thread;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

/// Preemptions per execution: the ABA needs the single popper stopped between its load
/// and its CAS while the other thread makes three changes (one preemption there, one
/// back); three as the other models.
const PREEMPTION_BOUND: usize = 3;
/// Blocks on the stack at the start, and fresh ones a refill pushes.
const STACKED: usize = 3;
const FRESH: usize = 2;
const BLOCKS: usize = STACKED + FRESH;

fn builder() -> loom::model::Builder {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(PREEMPTION_BOUND);
    }
    b
}

/// A model block: the link word first (as `stack` reads it), aligned as meta blocks.
#[repr(C, align(16))]
struct Block {
    link: AtomicUsize,
    /// Outside the model: whether some thread holds the block.
    owned: AtomicBool,
}

struct Shared<const TAGGED: bool> {
    stack: TaggedStack<AddressNames, TAGGED>,
    blocks: Box<[Block]>,
}

// SAFETY: the blocks are reached through the stack's atomics and the flags.
unsafe impl<const TAGGED: bool> Send for Shared<TAGGED> {}
// SAFETY: as above.
unsafe impl<const TAGGED: bool> Sync for Shared<TAGGED> {}

impl<const TAGGED: bool> Shared<TAGGED> {
    fn new() -> Arc<Self> {
        let blocks: Box<[Block]> = (0..BLOCKS)
            .map(|_| Block {
                link: AtomicUsize::new(0),
                owned: AtomicBool::new(true),
            })
            .collect();
        let shared = Shared {
            stack: TaggedStack::new(),
            blocks,
        };
        // A -> B -> C: push C, B, A.
        for i in (0..STACKED).rev() {
            shared.give(shared.ptr(i));
        }
        Arc::new(shared)
    }

    fn ptr(&self, i: usize) -> *mut u8 {
        &self.blocks[i] as *const Block as *mut u8
    }

    fn index(&self, p: *mut u8) -> usize {
        (0..BLOCKS)
            .find(|&i| self.ptr(i) == p)
            .expect("the stack handed out something that is no block")
    }

    /// A pop, recording the block as owned.
    fn take(&self) -> Option<usize> {
        let p = self.stack.pop();
        if p.is_null() {
            return None;
        }
        let i = self.index(p);
        assert!(
            !self.blocks[i].owned.swap(true, Relaxed),
            "block {i} handed out twice"
        );
        Some(i)
    }

    /// A push of an owned block.
    fn give(&self, p: *mut u8) {
        let i = self.index(p);
        assert!(
            self.blocks[i].owned.swap(false, Relaxed),
            "block {i} given twice"
        );
        // SAFETY: a model block (aligned, never freed while the model runs) we own.
        unsafe { self.stack.push(p) };
    }

    /// After the threads: every block is held by exactly one thread or on the stack once.
    fn check(&self, held: &[usize]) {
        let mut stacked = Vec::new();
        while let Some(i) = self.take() {
            stacked.push(i);
        }
        for i in 0..BLOCKS {
            let n = stacked.iter().chain(held).filter(|&&j| j == i).count();
            assert_eq!(n, 1, "block {i} held or stacked {n} times");
        }
    }
}

#[derive(Clone, Copy)]
enum Scenario {
    Aba,
    Refill,
}

fn run<const TAGGED: bool>(scenario: Scenario) {
    builder().check(move || {
        let shared = Shared::<TAGGED>::new();
        let other = {
            let shared = Arc::clone(&shared);
            thread::spawn(move || match scenario {
                Scenario::Aba => {
                    let first = shared.take();
                    let second = shared.take();
                    if let Some(i) = first {
                        shared.give(shared.ptr(i));
                    }
                    second.into_iter().collect::<Vec<_>>()
                }
                Scenario::Refill => {
                    let (d, e) = (shared.ptr(STACKED), shared.ptr(STACKED + 1));
                    for i in [STACKED, STACKED + 1] {
                        shared.blocks[i].owned.store(false, Relaxed);
                    }
                    // SAFETY: fresh model blocks of ours, chained `d -> e`.
                    unsafe {
                        TaggedStack::<AddressNames, TAGGED>::set_link(d, e);
                        shared.stack.push_chain(d, e);
                    }
                    shared.take().into_iter().collect()
                }
            })
        };
        let pops = match scenario {
            Scenario::Aba => 1,
            Scenario::Refill => 2,
        };
        let mut held: Vec<usize> = (0..pops).filter_map(|_| shared.take()).collect();
        held.extend(other.join().unwrap());
        if let Scenario::Aba = scenario {
            // The fresh blocks are not part of this scenario: the main thread keeps them.
            held.extend(STACKED..BLOCKS);
        }
        shared.check(&held);
    });
}

#[test]
fn loom_meta_stack_aba() {
    run::<true>(Scenario::Aba);
}

#[test]
fn loom_meta_stack_refill() {
    run::<true>(Scenario::Refill);
}

/// Without the tag, the pop that read `A -> B` succeeds after the other thread popped
/// `A` and `B` and pushed `A` back: `B`, held by that thread, becomes the head.
#[test]
#[should_panic(expected = "handed out twice")]
fn loom_meta_stack_aba_without_tag_fails() {
    run::<false>(Scenario::Aba);
}
