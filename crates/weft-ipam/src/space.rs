//! The local address space: which ranges this peer owns, and which addresses in them are free.
//!
//! As in Weave, a [`Space`] is two sorted boundary lists of half-open ranges, no bitmaps:
//! the ranges we own, and the free ranges inside them. An address is *allocated* when it is
//! owned and not free. Every operation costs O(log n) to find its place plus O(n) at worst to
//! shift the vector, where n is the number of ranges (not the number of addresses).

use std::net::Ipv4Addr;

use crate::address::{to_ipv4, Address, Range};

/// Errors of [`Space`] operations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpaceError {
    /// The address is outside every range this peer owns.
    #[error("address {0} is not in a range this peer owns")]
    NotOwned(Ipv4Addr),
    /// The address is already allocated.
    #[error("address {0} is already allocated")]
    AlreadyAllocated(Ipv4Addr),
    /// The address is owned but free.
    #[error("address {0} is not allocated")]
    NotAllocated(Ipv4Addr),
    /// The range overlaps a range this peer already owns.
    #[error("range {0} overlaps a range this peer already owns")]
    Overlap(Range),
    /// The range is not entirely owned and free.
    #[error("range {0} is not entirely owned and free")]
    NotFree(Range),
    /// An empty range was given where addresses are needed.
    #[error("empty range {0}")]
    Empty(Range),
}

/// A sorted list of non-empty, non-overlapping, non-adjacent ranges, with its total size.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct RangeList {
    ranges: Vec<Range>,
    total: u64,
}

impl RangeList {
    /// Index of the first range ending after `addr` (the one that would hold it).
    fn first_ending_after(&self, addr: Address) -> usize {
        self.ranges.partition_point(|r| r.end <= addr)
    }

    fn contains(&self, addr: Address) -> bool {
        let i = self.first_ending_after(addr);
        i < self.ranges.len() && self.ranges[i].start <= addr
    }

    /// The indices `[i, j)` of the ranges overlapping `r`.
    fn overlapping(&self, r: &Range) -> (usize, usize) {
        if r.is_empty() {
            return (0, 0);
        }
        let i = self.first_ending_after(r.start);
        let j = i + self.ranges[i..].partition_point(|x| x.start < r.end);
        (i, j)
    }

    fn count_in(&self, r: &Range) -> u64 {
        let (i, j) = self.overlapping(r);
        self.ranges[i..j]
            .iter()
            .map(|x| x.intersect(r).size())
            .sum()
    }

    fn lowest_in(&self, r: &Range) -> Option<Address> {
        let (i, j) = self.overlapping(r);
        (i < j).then(|| self.ranges[i].start.max(r.start))
    }

    /// Adds `r`, which must not overlap any range of the list; merges it with adjacent ranges.
    fn insert_disjoint(&mut self, r: Range) -> Result<(), SpaceError> {
        if r.is_empty() {
            return Err(SpaceError::Empty(r));
        }
        let p = self.ranges.partition_point(|x| x.start < r.start);
        let left = p.checked_sub(1).map(|k| self.ranges[k]);
        let right = self.ranges.get(p).copied();
        if left.is_some_and(|l| l.end > r.start) || right.is_some_and(|x| x.start < r.end) {
            return Err(SpaceError::Overlap(r));
        }
        let merge_left = left.is_some_and(|l| l.end == r.start);
        let merge_right = right.is_some_and(|x| x.start == r.end);
        match (merge_left, merge_right) {
            (true, true) => {
                self.ranges[p - 1].end = self.ranges[p].end;
                self.ranges.remove(p);
            }
            (true, false) => self.ranges[p - 1].end = r.end,
            (false, true) => self.ranges[p].start = r.start,
            (false, false) => self.ranges.insert(p, r),
        }
        self.total += r.size();
        Ok(())
    }

    /// Removes every address of `r` present in the list; returns how many were removed.
    fn remove_range(&mut self, r: &Range) -> u64 {
        let (i, j) = self.overlapping(r);
        if i == j {
            return 0;
        }
        let removed: u64 = self.ranges[i..j]
            .iter()
            .map(|x| x.intersect(r).size())
            .sum();
        let first = self.ranges[i];
        let last = self.ranges[j - 1];
        let mut keep = Vec::with_capacity(2);
        if first.start < r.start {
            keep.push(Range::new(first.start, r.start));
        }
        if last.end > r.end {
            keep.push(Range::new(r.end, last.end));
        }
        self.ranges.splice(i..j, keep);
        self.total -= removed;
        removed
    }

    fn remove_addr(&mut self, addr: Address) -> bool {
        // addr < u32::MAX whenever it is contained, since ends are exclusive u32s.
        self.contains(addr) && self.remove_range(&Range::new(addr, addr + 1)) == 1
    }
}

/// The ranges this peer owns and the free addresses in them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Space {
    owned: RangeList,
    free: RangeList,
}

impl Space {
    /// An empty space: nothing owned.
    pub fn new() -> Space {
        Space::default()
    }

    /// Takes ownership of `range`, all of it free. Fails if it overlaps a range already owned.
    pub fn add(&mut self, range: Range) -> Result<(), SpaceError> {
        self.owned.insert_disjoint(range)?;
        // Owned ranges are disjoint, so the free list (a subset of owned) cannot overlap it.
        self.free.insert_disjoint(range)
    }

    /// Allocates the lowest free address within `range`; `None` when none is free there.
    pub fn allocate(&mut self, range: Range) -> Option<Address> {
        let addr = self.free.lowest_in(&range)?;
        let removed = self.free.remove_addr(addr);
        debug_assert!(removed);
        Some(addr)
    }

    /// Marks a specific address as allocated.
    pub fn claim(&mut self, addr: Address) -> Result<(), SpaceError> {
        if !self.owned.contains(addr) {
            return Err(SpaceError::NotOwned(to_ipv4(addr)));
        }
        if !self.free.remove_addr(addr) {
            return Err(SpaceError::AlreadyAllocated(to_ipv4(addr)));
        }
        Ok(())
    }

    /// Returns an allocated address to the free list; it is reusable at once.
    pub fn free(&mut self, addr: Address) -> Result<(), SpaceError> {
        if !self.owned.contains(addr) {
            return Err(SpaceError::NotOwned(to_ipv4(addr)));
        }
        if self.free.contains(addr) {
            return Err(SpaceError::NotAllocated(to_ipv4(addr)));
        }
        // addr is owned, so addr < u32::MAX.
        self.free.insert_disjoint(Range::new(addr, addr + 1))
    }

    /// True when `addr` is in a range we own.
    pub fn is_owned(&self, addr: Address) -> bool {
        self.owned.contains(addr)
    }

    /// True when `addr` is owned and allocated.
    pub fn is_allocated(&self, addr: Address) -> bool {
        self.owned.contains(addr) && !self.free.contains(addr)
    }

    /// True when `addr` is owned and free.
    pub fn is_free(&self, addr: Address) -> bool {
        self.free.contains(addr)
    }

    /// Free addresses within `range`.
    pub fn num_free_in(&self, range: Range) -> u64 {
        self.free.count_in(&range)
    }

    /// Owned addresses within `range`.
    pub fn num_owned_in(&self, range: Range) -> u64 {
        self.owned.count_in(&range)
    }

    /// Allocated addresses within `range`.
    pub fn num_allocated_in(&self, range: Range) -> u64 {
        self.num_owned_in(range) - self.num_free_in(range)
    }

    /// All free addresses.
    pub fn num_free(&self) -> u64 {
        self.free.total
    }

    /// All owned addresses.
    pub fn num_owned(&self) -> u64 {
        self.owned.total
    }

    /// All allocated addresses.
    pub fn num_allocated(&self) -> u64 {
        self.owned.total - self.free.total
    }

    /// The owned ranges, sorted, adjacent ranges merged.
    pub fn owned_ranges(&self) -> &[Range] {
        &self.owned.ranges
    }

    /// The free ranges, sorted, adjacent ranges merged.
    pub fn free_ranges(&self) -> &[Range] {
        &self.free.ranges
    }

    /// The biggest CIDR-aligned block of free addresses within `range` (lowest one on ties).
    pub fn biggest_free_cidr(&self, range: Range) -> Option<Range> {
        let (i, j) = self.free.overlapping(&range);
        let mut best: Option<Range> = None;
        for free in &self.free.ranges[i..j] {
            if let Some(block) = free.intersect(&range).biggest_cidr() {
                if best.is_none_or(|b| block.size() > b.size()) {
                    best = Some(block);
                }
            }
        }
        best
    }

    /// Gives up ownership of `range`, which must be entirely owned and free.
    pub fn remove_free(&mut self, range: Range) -> Result<(), SpaceError> {
        if range.is_empty() {
            return Err(SpaceError::Empty(range));
        }
        if self.free.count_in(&range) != range.size() {
            return Err(SpaceError::NotFree(range));
        }
        self.free.remove_range(&range);
        self.owned.remove_range(&range);
        Ok(())
    }

    /// Picks free space within `range` to give to another peer and gives up its ownership, as
    /// Weave's `Space.Donate`: the biggest free CIDR block; only its upper half when that block
    /// is more than half of the free space in `range`. `None` when nothing is free there.
    pub fn donate(&mut self, range: Range) -> Option<Range> {
        let mut chunk = self.biggest_free_cidr(range)?;
        if chunk.size() > 1 && chunk.size() * 2 > self.num_free_in(range) {
            // size is a power of two >= 2, so the midpoint is exact.
            chunk.start += (chunk.size() / 2) as u32;
        }
        self.remove_free(chunk).ok()?;
        Some(chunk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::{from_ipv4, CidrExt};

    fn a(s: &str) -> Address {
        from_ipv4(s.parse().unwrap())
    }

    fn universe() -> Range {
        "10.32.0.0/12"
            .parse::<ipnet::Ipv4Net>()
            .unwrap()
            .addr_range()
            .unwrap()
    }

    #[test]
    fn lowest_first_and_reuse() {
        let mut s = Space::new();
        s.add(universe()).unwrap();
        let host = "10.32.0.0/12"
            .parse::<ipnet::Ipv4Net>()
            .unwrap()
            .host_range();
        assert_eq!(s.num_free_in(host), 1_048_574);
        assert_eq!(s.allocate(host), Some(a("10.32.0.1")));
        assert_eq!(s.allocate(host), Some(a("10.32.0.2")));
        assert_eq!(s.allocate(host), Some(a("10.32.0.3")));
        s.free(a("10.32.0.2")).unwrap();
        assert_eq!(s.allocate(host), Some(a("10.32.0.2")));
        assert_eq!(s.num_allocated(), 3);
        assert_eq!(s.num_free(), (1 << 20) - 3);
        assert_eq!(s.free_ranges().len(), 2);
        assert!(s.is_allocated(a("10.32.0.3")));
        assert!(!s.is_allocated(a("10.32.0.4")));
        assert!(!s.is_allocated(a("10.48.0.4")));
    }

    #[test]
    fn claim_and_free_errors() {
        let mut s = Space::new();
        s.add(Range::new(100, 200)).unwrap();
        assert_eq!(s.claim(50), Err(SpaceError::NotOwned(to_ipv4(50))));
        s.claim(150).unwrap();
        assert_eq!(
            s.claim(150),
            Err(SpaceError::AlreadyAllocated(to_ipv4(150)))
        );
        assert_eq!(s.free(151), Err(SpaceError::NotAllocated(to_ipv4(151))));
        assert_eq!(s.free(250), Err(SpaceError::NotOwned(to_ipv4(250))));
        s.free(150).unwrap();
        assert_eq!(s.free_ranges(), &[Range::new(100, 200)]);
        assert_eq!(
            s.add(Range::new(199, 300)),
            Err(SpaceError::Overlap(Range::new(199, 300)))
        );
        s.add(Range::new(200, 300)).unwrap();
        assert_eq!(s.owned_ranges(), &[Range::new(100, 300)]);
        assert_eq!(
            s.add(Range::new(5, 5)),
            Err(SpaceError::Empty(Range::new(5, 5)))
        );
    }

    #[test]
    fn allocate_within_subrange_and_exhaustion() {
        let mut s = Space::new();
        s.add(Range::new(0, 10)).unwrap();
        s.add(Range::new(20, 30)).unwrap();
        assert_eq!(s.allocate(Range::new(8, 25)), Some(8));
        assert_eq!(s.allocate(Range::new(8, 25)), Some(9));
        assert_eq!(s.allocate(Range::new(8, 25)), Some(20));
        assert_eq!(s.allocate(Range::new(10, 20)), None);
        assert_eq!(s.num_allocated_in(Range::new(0, 100)), 3);
        assert_eq!(s.num_owned_in(Range::new(5, 25)), 10);
    }

    #[test]
    fn top_of_address_space() {
        let mut s = Space::new();
        s.add(Range::new(u32::MAX - 4, u32::MAX)).unwrap();
        for expect in (u32::MAX - 4)..u32::MAX {
            assert_eq!(s.allocate(Range::new(0, u32::MAX)), Some(expect));
        }
        assert_eq!(s.allocate(Range::new(0, u32::MAX)), None);
        assert_eq!(
            s.claim(u32::MAX),
            Err(SpaceError::NotOwned(to_ipv4(u32::MAX)))
        );
        s.free(u32::MAX - 1).unwrap();
        assert_eq!(s.free_ranges(), &[Range::new(u32::MAX - 1, u32::MAX)]);
    }

    #[test]
    fn biggest_free_and_donate() {
        let mut s = Space::new();
        s.add(universe()).unwrap();
        let u = universe();
        assert_eq!(s.biggest_free_cidr(u), Some(u));
        // Whole universe free: the biggest block is all of it, more than half, so the upper half.
        let d = s.donate(u).unwrap();
        assert_eq!(d.to_string(), "10.40.0.0-10.47.255.255");
        assert_eq!(
            s.owned_ranges(),
            &[Range::new(a("10.32.0.0"), a("10.40.0.0"))]
        );
        assert_eq!(s.allocate(u), Some(a("10.32.0.0")));
        // Biggest free block in 10.32.0.1-10.39.255.255 is 10.36.0.0/14.
        assert_eq!(
            s.biggest_free_cidr(u).map(|r| r.to_string()),
            Some("10.36.0.0-10.39.255.255".to_string())
        );
        assert_eq!(
            s.remove_free(Range::new(a("10.32.0.0"), a("10.32.0.2"))),
            Err(SpaceError::NotFree(Range::new(
                a("10.32.0.0"),
                a("10.32.0.2")
            )))
        );
        s.remove_free(Range::new(a("10.32.0.1"), a("10.32.0.3")))
            .unwrap();
        assert_eq!(s.num_owned(), (1 << 19) - 2);
        assert_eq!(s.num_allocated(), 1);
    }
}
