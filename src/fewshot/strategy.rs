//! The selection strategies, as pure functions over a pool of examples. Each returns indices
//! into the pool, in the order the examples are shown.

use crate::prompts::Example;

/// Highest `quality_score` first; ties keep file order.
pub fn quality(pool: &[Example], n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..pool.len()).collect();
    // A stable sort keeps file order among equal scores.
    order.sort_by(|&a, &b| pool[b].quality_score.total_cmp(&pool[a].quality_score));
    order.truncate(n);
    order
}

/// The seed lesson's round-robin over categories: categories in first-seen order, each turn
/// takes the best remaining example of the next category, and — exactly as the seed — it
/// stops after `len(pool)` turns even if fewer than `n` were picked.
pub fn diverse(pool: &[Example], n: usize) -> Vec<usize> {
    let mut categories: Vec<Option<&str>> = Vec::new();
    let mut members: Vec<Vec<usize>> = Vec::new();
    for (i, ex) in pool.iter().enumerate() {
        let cat = ex.category.as_deref();
        match categories.iter().position(|c| *c == cat) {
            Some(k) => members[k].push(i),
            None => {
                categories.push(cat);
                members.push(vec![i]);
            }
        }
    }
    let mut selected = Vec::new();
    let mut turn = 0;
    while selected.len() < n && turn < pool.len() {
        let bucket = &mut members[turn % categories.len()];
        if !bucket.is_empty() {
            // Python's max() returns the first of equal maxima.
            let mut best = 0;
            for (k, &i) in bucket.iter().enumerate() {
                if pool[i].quality_score > pool[bucket[best]].quality_score {
                    best = k;
                }
            }
            selected.push(bucket.remove(best));
        }
        turn += 1;
    }
    selected
}

/// Dot product, in eight independent lanes so the compiler can vectorise it (a single running
/// sum of floats cannot be reordered, so it would not be).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            lanes[k] += x[k] * y[k];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    lanes.iter().sum::<f32>() + tail
}

/// Cosine similarity of two vectors (0 when either is all zeros).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (na, nb) = (dot(a, a), dot(b, b));
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot(a, b) / (na.sqrt() * nb.sqrt())
    }
}

/// The vector scaled to unit length (all zeros stays all zeros).
pub fn unit(v: &[f32]) -> Vec<f32> {
    let norm = dot(v, v).sqrt();
    if norm == 0.0 {
        v.to_vec()
    } else {
        v.iter().map(|x| x / norm).collect()
    }
}

/// The `n` examples whose input is most similar to the query; ties keep file order. The
/// example vectors must be unit length (the embedder makes them so), so cosine is a dot
/// product.
pub fn semantic<V: AsRef<[f32]>>(query: &[f32], vectors: &[V], n: usize) -> Vec<usize> {
    let query = unit(query);
    let scores: Vec<f32> = vectors.iter().map(|v| dot(&query, v.as_ref())).collect();
    let mut order: Vec<usize> = (0..vectors.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    order.truncate(n);
    order
}

/// Maximal marginal relevance: each pick maximises
/// `λ·sim(query, d) − (1 − λ)·max sim(d, already picked)`, so the picks are relevant to the
/// query and not near-copies of each other. λ = 1 is plain semantic selection.
pub fn mmr<V: AsRef<[f32]>>(query: &[f32], vectors: &[V], n: usize, lambda: f32) -> Vec<usize> {
    let query = unit(query);
    let relevance: Vec<f32> = vectors.iter().map(|v| dot(&query, v.as_ref())).collect();
    let mut selected: Vec<usize> = Vec::new();
    let mut left: Vec<usize> = (0..vectors.len()).collect();
    while selected.len() < n && !left.is_empty() {
        let mut best: Option<(usize, f32)> = None;
        for (pos, &i) in left.iter().enumerate() {
            let redundancy = selected
                .iter()
                .map(|&s| dot(vectors[i].as_ref(), vectors[s].as_ref()))
                .fold(f32::NEG_INFINITY, f32::max);
            let redundancy = if selected.is_empty() { 0.0 } else { redundancy };
            let score = lambda * relevance[i] - (1.0 - lambda) * redundancy;
            // Strictly greater: ties keep file order.
            if best.is_none_or(|(_, b)| score > b) {
                best = Some((pos, score));
            }
        }
        let Some((pos, _)) = best else { break };
        selected.push(left.remove(pos));
    }
    selected
}

/// The seed's formatted block: `Example i:` / `Input: ...` / `Output: ...` and a blank line
/// after each, under its heading.
pub fn format_block(examples: &[&Example]) -> String {
    let mut parts = vec!["Here are examples of correct responses:".to_owned()];
    for (i, ex) in examples.iter().enumerate() {
        parts.push(format!("Example {}:", i + 1));
        parts.push(format!("Input: {}", ex.input));
        parts.push(format!("Output: {}", ex.output));
        parts.push(String::new());
    }
    parts.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(input: &str, category: Option<&str>, quality: f64) -> Example {
        Example {
            input: input.to_owned(),
            output: format!("out-{input}"),
            category: category.map(str::to_owned),
            quality_score: quality,
        }
    }

    fn inputs(pool: &[Example], picked: &[usize]) -> Vec<String> {
        picked.iter().map(|&i| pool[i].input.clone()).collect()
    }

    #[test]
    fn quality_is_best_first_with_file_order_ties() {
        let pool = vec![
            ex("a", None, 0.5),
            ex("b", None, 0.9),
            ex("c", None, 0.9),
            ex("d", None, 0.7),
        ];
        assert_eq!(inputs(&pool, &quality(&pool, 3)), ["b", "c", "d"]);
        assert_eq!(quality(&pool, 10).len(), 4);
    }

    /// The seed's `select_examples(strategy="diverse")`, step by step, on hand-made pools.
    /// Expected values were computed by running the seed's Python on the same pools.
    #[test]
    fn diverse_picks_what_the_seed_picks() {
        let pool = vec![
            ex("n1", Some("negative"), 0.98),
            ex("p1", Some("positive"), 0.95),
            ex("n2", Some("negative"), 0.99),
            ex("u1", Some("neutral"), 0.5),
            ex("p2", Some("positive"), 0.97),
        ];
        assert_eq!(inputs(&pool, &diverse(&pool, 2)), ["n2", "p2"]);
        assert_eq!(inputs(&pool, &diverse(&pool, 4)), ["n2", "p2", "u1", "n1"]);
        assert_eq!(
            inputs(&pool, &diverse(&pool, 9)),
            ["n2", "p2", "u1", "n1", "p1"]
        );

        // Uneven categories: the seed stops after len(pool) turns, with fewer than n.
        let pool = vec![
            ex("a1", Some("a"), 0.1),
            ex("a2", Some("a"), 0.2),
            ex("a3", Some("a"), 0.3),
            ex("b1", Some("b"), 0.9),
        ];
        assert_eq!(inputs(&pool, &diverse(&pool, 4)), ["a3", "b1", "a2"]);

        // No category is a category of its own; equal scores pick the first.
        let pool = vec![
            ex("x1", None, 0.5),
            ex("y1", Some("y"), 0.5),
            ex("x2", None, 0.5),
        ];
        assert_eq!(inputs(&pool, &diverse(&pool, 3)), ["x1", "y1", "x2"]);
        assert!(diverse(&[], 3).is_empty());
    }

    #[test]
    fn semantic_ranks_by_cosine() {
        let vectors = vec![
            vec![1.0, 0.0],
            vec![0.0, 1.0],
            vec![0.7, 0.7],
            vec![0.0, 0.0],
        ];
        assert_eq!(semantic(&[1.0, 0.1], &vectors, 2), [0, 2]);
        assert_eq!(semantic(&[0.0, 1.0], &vectors, 4), [1, 2, 0, 3]);
        assert!((cosine(&[1.0, 0.0], &[2.0, 0.0]) - 1.0).abs() < 1e-6);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
        let long: Vec<f32> = (0..21).map(|i| i as f32).collect();
        let naive: f32 = long.iter().map(|x| x * x).sum();
        assert!(
            (dot(&long, &long) - naive).abs() < 1e-3,
            "lanes and tail both count"
        );
    }

    #[test]
    fn mmr_trades_relevance_for_novelty() {
        // Two near-duplicates close to the query, and one different but still relevant.
        let vectors = vec![
            vec![1.0, 0.0, 0.0],
            vec![0.99, 0.05, 0.0],
            vec![0.6, 0.0, 0.8],
        ];
        let query = [0.9, 0.0, 0.3];
        assert_eq!(
            semantic(&query, &vectors, 2),
            [0, 1],
            "plain relevance takes both twins"
        );
        assert_eq!(mmr(&query, &vectors, 2, 0.5), [0, 2], "mmr skips the twin");
        assert_eq!(mmr(&query, &vectors, 2, 1.0), [0, 1], "λ = 1 is semantic");
        assert_eq!(mmr(&query, &vectors, 5, 0.5).len(), 3);
    }

    #[test]
    fn block_is_the_seeds_format() {
        let a = ex("hi", None, 1.0);
        let b = ex("bye", None, 1.0);
        assert_eq!(
            format_block(&[&a, &b]),
            "Here are examples of correct responses:\nExample 1:\nInput: hi\nOutput: out-hi\n\nExample 2:\nInput: bye\nOutput: out-bye\n"
        );
    }
}
