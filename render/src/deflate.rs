//! A DEFLATE (RFC 1951) compressor for the pictures this crate draws, and nothing else.
//!
//! A QR code's scanlines repeat: every module is `module_px` identical rows, and inside a row
//! modules are runs of equal bytes. A general compressor spends its time searching a hash chain
//! for those repeats (zlib at level 9 takes most of a code's render time). We know where they
//! are, so the match finder only tries a handful of distances (the previous scanline and short
//! runs), greedily, and one dynamic Huffman block encodes the result. On our codes that is as
//! small as zlib's best and an order of magnitude faster; on arbitrary data it is still correct,
//! only weaker.

/// Matches are looked for this far back: short runs, and the scanline above (`row_len`).
const SHORT_DISTANCES: [usize; 4] = [1, 2, 3, 4];
const MIN_MATCH: usize = 3;
const MAX_MATCH: usize = 258;
const END_OF_BLOCK: usize = 256;
const MAX_CODE_BITS: u8 = 15;
const MAX_CODE_LENGTH_BITS: u8 = 7;
/// The order in which code-length code lengths are sent (RFC 1951 §3.2.7).
const CODE_LENGTH_ORDER: [usize; 19] = [
    16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
];

#[derive(Clone, Copy)]
enum Token {
    Literal(u8),
    Match { length: u16, distance: u16 },
}

/// Compresses `data`, whose repeats are mostly `row_len` bytes apart, into one final block.
pub fn compress(data: &[u8], row_len: usize, out: &mut Vec<u8>) {
    let tokens = find_matches(data, row_len);
    let mut literal_counts = [0_u32; 286];
    let mut distance_counts = [0_u32; 30];
    for token in &tokens {
        match *token {
            Token::Literal(byte) => literal_counts[usize::from(byte)] += 1,
            Token::Match { length, distance } => {
                literal_counts[257 + length_code(length).0] += 1;
                distance_counts[distance_code(distance).0] += 1;
            }
        }
    }
    literal_counts[END_OF_BLOCK] += 1;
    let literal_lengths = code_lengths(&literal_counts, MAX_CODE_BITS);
    let distance_lengths = code_lengths(&distance_counts, MAX_CODE_BITS);
    let literal_codes = canonical_codes(&literal_lengths);
    let distance_codes = canonical_codes(&distance_lengths);

    let mut bits = BitWriter {
        out,
        buffer: 0,
        count: 0,
    };
    bits.put(1, 1); // final block
    bits.put(2, 2); // dynamic Huffman codes
    write_code_lengths(&mut bits, &literal_lengths, &distance_lengths);
    for token in &tokens {
        match *token {
            Token::Literal(byte) => {
                let symbol = usize::from(byte);
                bits.put(literal_codes[symbol], literal_lengths[symbol]);
            }
            Token::Match { length, distance } => {
                let (code, extra_bits, extra) = length_code(length);
                bits.put(literal_codes[257 + code], literal_lengths[257 + code]);
                bits.put(extra, extra_bits);
                let (code, extra_bits, extra) = distance_code(distance);
                bits.put(distance_codes[code], distance_lengths[code]);
                bits.put(extra, extra_bits);
            }
        }
    }
    bits.put(literal_codes[END_OF_BLOCK], literal_lengths[END_OF_BLOCK]);
    bits.flush();
}

/// Greedy LZ77 over a few candidate distances; the longest match wins, the nearer on a tie.
fn find_matches(data: &[u8], row_len: usize) -> Vec<Token> {
    let mut tokens = Vec::with_capacity(data.len() / 8);
    let mut at = 0;
    while at < data.len() {
        let limit = MAX_MATCH.min(data.len() - at);
        let mut best = (0, 0);
        for distance in SHORT_DISTANCES.into_iter().chain([row_len]) {
            if distance == 0 || distance > at || distance > 32_768 {
                continue;
            }
            let length = common_prefix(&data[at..at + limit], &data[at - distance..]);
            if length > best.0 {
                best = (length, distance);
            }
        }
        if best.0 >= MIN_MATCH {
            // Both fit in u16: MAX_MATCH and the 32 KiB window.
            tokens.push(Token::Match {
                length: u16::try_from(best.0).unwrap_or(u16::MAX),
                distance: u16::try_from(best.1).unwrap_or(u16::MAX),
            });
            at += best.0;
        } else {
            tokens.push(Token::Literal(data[at]));
            at += 1;
        }
    }
    tokens
}

/// How many leading bytes `ahead` shares with `behind`; `behind` may overlap `ahead` (a run).
fn common_prefix(ahead: &[u8], behind: &[u8]) -> usize {
    ahead.iter().zip(behind).take_while(|(a, b)| a == b).count()
}

/// Length symbol (0-based from 257), extra bit count and extra value (RFC 1951 §3.2.5).
fn length_code(length: u16) -> (usize, u8, u32) {
    const BASE: [u16; 29] = [
        3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115,
        131, 163, 195, 227, 258,
    ];
    const EXTRA: [u8; 29] = [
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
    ];
    let code = BASE.partition_point(|&base| base <= length) - 1;
    (code, EXTRA[code], u32::from(length - BASE[code]))
}

/// Distance symbol, extra bit count and extra value (RFC 1951 §3.2.5).
fn distance_code(distance: u16) -> (usize, u8, u32) {
    const BASE: [u16; 30] = [
        1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537,
        2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577,
    ];
    let code = BASE.partition_point(|&base| base <= distance) - 1;
    let extra_bits = if code < 4 {
        0
    } else {
        u8::try_from(code / 2 - 1).unwrap_or(0)
    };
    (code, extra_bits, u32::from(distance - BASE[code]))
}

/// Huffman code lengths no longer than `max_bits`. Every alphabet gets at least two codes, so
/// that each code is complete (some decoders refuse a lone one-bit code).
fn code_lengths(counts: &[u32], max_bits: u8) -> Vec<u8> {
    let mut used: Vec<(u32, usize)> = counts
        .iter()
        .enumerate()
        .filter(|&(_, &count)| count > 0)
        .map(|(symbol, &count)| (count, symbol))
        .collect();
    let unused = counts.iter().enumerate().filter(|&(_, &count)| count == 0);
    for (symbol, _) in unused.take(2_usize.saturating_sub(used.len())) {
        used.push((1, symbol));
    }
    used.sort_unstable();

    // Huffman's algorithm with two queues over the sorted leaves: O(n) after the sort.
    let leaves = used.len();
    let mut weight: Vec<u64> = used.iter().map(|&(count, _)| u64::from(count)).collect();
    let mut parent = vec![0_usize; 2 * leaves - 1];
    let (mut next_leaf, mut next_node) = (0, leaves);
    for node in leaves..2 * leaves - 1 {
        let mut take = || {
            let leaf_first =
                next_node >= node || (next_leaf < leaves && weight[next_leaf] <= weight[next_node]);
            if leaf_first {
                next_leaf += 1;
                next_leaf - 1
            } else {
                next_node += 1;
                next_node - 1
            }
        };
        let (a, b) = (take(), take());
        weight.push(weight[a] + weight[b]);
        parent[a] = node;
        parent[b] = node;
    }
    let root = 2 * leaves - 2;
    let mut depth = vec![0_u8; 2 * leaves - 1];
    for node in (0..root).rev() {
        depth[node] = depth[parent[node]] + 1;
    }

    // Too-deep codes are cut to `max_bits` and the Kraft sum is repaired by lengthening the
    // deepest code that can still grow, as zlib and miniz do.
    let mut per_length = vec![0_u32; usize::from(max_bits) + 1];
    for &d in &depth[..leaves] {
        per_length[usize::from(d.min(max_bits))] += 1;
    }
    let max = usize::from(max_bits);
    let capacity = 1_u64 << max;
    let mut kraft: u64 = (1..=max)
        .map(|len| u64::from(per_length[len]) << (max - len))
        .sum();
    while kraft > capacity {
        per_length[max] -= 1;
        if let Some(len) = (1..max).rev().find(|&len| per_length[len] > 0) {
            per_length[len] -= 1;
            per_length[len + 1] += 2;
        }
        kraft -= 1;
    }

    // The most frequent symbols (the end of `used`) take the shortest lengths.
    let mut lengths = vec![0_u8; counts.len()];
    let mut symbols = used.iter().rev().map(|&(_, symbol)| symbol);
    for (len, &how_many) in per_length.iter().enumerate().skip(1) {
        for symbol in symbols.by_ref().take(how_many as usize) {
            lengths[symbol] = u8::try_from(len).unwrap_or(max_bits);
        }
    }
    lengths
}

/// Canonical codes for `lengths`, bit-reversed so they can be written least significant first.
fn canonical_codes(lengths: &[u8]) -> Vec<u32> {
    let mut per_length = [0_u32; 16];
    for &len in lengths {
        per_length[usize::from(len)] += 1;
    }
    per_length[0] = 0;
    let mut next = [0_u32; 16];
    let mut code = 0;
    for len in 1..16 {
        code = (code + per_length[len - 1]) << 1;
        next[len] = code;
    }
    lengths
        .iter()
        .map(|&len| {
            if len == 0 {
                return 0;
            }
            let code = next[usize::from(len)];
            next[usize::from(len)] += 1;
            code.reverse_bits() >> (32 - u32::from(len))
        })
        .collect()
}

/// The block header's code length tables, run-length coded with symbols 16–18.
fn write_code_lengths(bits: &mut BitWriter<'_>, literal_lengths: &[u8], distance_lengths: &[u8]) {
    let literal_count = 257.max(
        literal_lengths
            .iter()
            .rposition(|&len| len > 0)
            .map_or(0, |last| last + 1),
    );
    let distance_count = 1.max(
        distance_lengths
            .iter()
            .rposition(|&len| len > 0)
            .map_or(0, |last| last + 1),
    );
    let all: Vec<u8> = literal_lengths[..literal_count]
        .iter()
        .chain(&distance_lengths[..distance_count])
        .copied()
        .collect();

    // (symbol, extra bit count, extra value)
    let mut runs: Vec<(usize, u8, u32)> = Vec::with_capacity(all.len());
    let mut at = 0;
    while at < all.len() {
        let len = all[at];
        let run = all[at..].iter().take_while(|&&other| other == len).count();
        if len == 0 && run >= 11 {
            let take = run.min(138);
            runs.push((18, 7, u32::try_from(take - 11).unwrap_or(0)));
            at += take;
        } else if len == 0 && run >= 3 {
            runs.push((17, 3, u32::try_from(run - 3).unwrap_or(0)));
            at += run;
        } else if len != 0 && run >= 4 {
            runs.push((usize::from(len), 0, 0));
            let take = (run - 1).min(6);
            runs.push((16, 2, u32::try_from(take - 3).unwrap_or(0)));
            at += 1 + take;
        } else {
            runs.push((usize::from(len), 0, 0));
            at += 1;
        }
    }

    let mut counts = [0_u32; 19];
    for &(symbol, _, _) in &runs {
        counts[symbol] += 1;
    }
    let lengths = code_lengths(&counts, MAX_CODE_LENGTH_BITS);
    let codes = canonical_codes(&lengths);
    let sent = 4.max(
        CODE_LENGTH_ORDER
            .iter()
            .rposition(|&symbol| lengths[symbol] > 0)
            .map_or(0, |last| last + 1),
    );

    bits.put(u32::try_from(literal_count - 257).unwrap_or(0), 5);
    bits.put(u32::try_from(distance_count - 1).unwrap_or(0), 5);
    bits.put(u32::try_from(sent - 4).unwrap_or(0), 4);
    for &symbol in &CODE_LENGTH_ORDER[..sent] {
        bits.put(u32::from(lengths[symbol]), 3);
    }
    for (symbol, extra_bits, extra) in runs {
        bits.put(codes[symbol], lengths[symbol]);
        bits.put(extra, extra_bits);
    }
}

struct BitWriter<'a> {
    out: &'a mut Vec<u8>,
    buffer: u64,
    count: u32,
}

impl BitWriter<'_> {
    #[inline]
    fn put(&mut self, value: u32, bits: u8) {
        self.buffer |= u64::from(value) << self.count;
        self.count += u32::from(bits);
        if self.count >= 32 {
            self.out
                .extend_from_slice(&(self.buffer as u32).to_le_bytes());
            self.buffer >>= 32;
            self.count -= 32;
        }
    }

    fn flush(&mut self) {
        let bytes = self.count.div_ceil(8) as usize;
        self.out
            .extend_from_slice(&self.buffer.to_le_bytes()[..bytes]);
        self.buffer = 0;
        self.count = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inflate(compressed: &[u8]) -> Vec<u8> {
        miniz_oxide::inflate::decompress_to_vec(compressed).unwrap()
    }

    fn round_trip(data: &[u8], row_len: usize) -> usize {
        let mut out = Vec::new();
        compress(data, row_len, &mut out);
        assert_eq!(inflate(&out), data, "row_len {row_len}");
        out.len()
    }

    #[test]
    fn round_trips_repetitive_random_and_tiny_inputs() {
        round_trip(b"", 1);
        round_trip(b"a", 1);
        round_trip(b"abababababababababab", 2);
        let mut rows = Vec::new();
        for row in 0..300_u32 {
            let line: Vec<u8> = (0..42_u32)
                .map(|i| if (i * 7 + row / 8) % 5 < 2 { 0 } else { 0xFF })
                .collect();
            rows.extend_from_slice(&line);
        }
        let size = round_trip(&rows, 42);
        assert!(size < rows.len() / 10, "{size} bytes for {}", rows.len());
        // Pseudo-random bytes: every literal, long codes, no matches.
        let mut state = 0x2545_F491_u32;
        let noise: Vec<u8> = (0..70_000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                state.to_le_bytes()[0]
            })
            .collect();
        round_trip(&noise, 100);
    }

    #[test]
    fn code_lengths_stay_within_the_limit_on_skewed_counts() {
        // Fibonacci counts make the deepest possible Huffman tree.
        let mut counts = vec![1_u32, 1];
        while counts.len() < 30 {
            let next = counts[counts.len() - 1] + counts[counts.len() - 2];
            counts.push(next);
        }
        for limit in [7, 15] {
            let lengths = code_lengths(&counts, limit);
            assert!(
                lengths.iter().all(|&len| (1..=limit).contains(&len)),
                "{lengths:?}"
            );
            let kraft: f64 = lengths
                .iter()
                .map(|&len| 0.5_f64.powi(i32::from(len)))
                .sum();
            assert!(
                (kraft - 1.0).abs() < 1e-9,
                "Kraft sum {kraft} for {lengths:?}"
            );
        }
    }

    #[test]
    fn symbol_tables_follow_rfc_1951() {
        assert_eq!(length_code(3), (0, 0, 0));
        assert_eq!(length_code(10), (7, 0, 0));
        assert_eq!(length_code(11), (8, 1, 0));
        assert_eq!(length_code(257), (27, 5, 30));
        assert_eq!(length_code(258), (28, 0, 0));
        assert_eq!(distance_code(1), (0, 0, 0));
        assert_eq!(distance_code(5), (4, 1, 0));
        assert_eq!(distance_code(42), (10, 4, 9));
        assert_eq!(distance_code(32_768), (29, 13, 8191));
    }
}
