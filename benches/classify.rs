//! Classifier micro-benchmarks: the cache-hit path every statement takes,
//! and the cache-miss path (lex + parse + tree walk) for a point select and
//! an analytic query. Targets: hit ≤ 0.5 µs, point-select miss ≤ 15 µs.

use criterion::{Criterion, criterion_group, criterion_main};
use pgsidecar::routing::Classifier;
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Counts heap allocations, to check (not just claim) that a cache hit
/// allocates nothing.
struct CountingAlloc;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call unchanged to the system allocator.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

fn allocations_per_call(f: impl Fn()) -> f64 {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..1000 {
        f();
    }
    (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / 1000.0
}

const POINT: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = 12345";

const ANALYTIC: &str = r#"
WITH recent_orders AS (
    SELECT o.id, o.customer_id, o.total, o.created_at
    FROM orders o
    WHERE o.created_at >= now() - interval '30 days'
      AND o.status IN ('paid', 'shipped')
),
customer_totals AS (
    SELECT r.customer_id,
           sum(r.total) AS total_spent,
           count(*) AS order_count,
           max(r.created_at) AS last_order
    FROM recent_orders r
    GROUP BY r.customer_id
    HAVING count(*) > 1
)
SELECT c.id,
       c.name,
       ct.total_spent,
       ct.order_count,
       rank() OVER (PARTITION BY c.region ORDER BY ct.total_spent DESC) AS region_rank,
       avg(ct.total_spent) OVER (PARTITION BY c.region) AS region_avg,
       coalesce(l.points, 0) AS loyalty_points,
       date_trunc('week', ct.last_order) AS last_week
FROM customers c
JOIN customer_totals ct ON ct.customer_id = c.id
LEFT JOIN loyalty l ON l.customer_id = c.id AND l.active
WHERE c.region = $1
  AND c.created_at < $2
  AND EXISTS (SELECT 1 FROM addresses a WHERE a.customer_id = c.id AND a.country = 'NZ')
ORDER BY region_rank, ct.total_spent DESC
LIMIT 100
"#;

fn benches(c: &mut Criterion) {
    let warm = Classifier::new(&[], 1 << 20, 10_000);
    warm.classify(POINT);
    let per_hit = allocations_per_call(|| {
        black_box(warm.classify(black_box(POINT)));
    });
    println!("allocations per cache hit: {per_hit}");
    assert_eq!(per_hit, 0.0, "the cache-hit path must not allocate");
    c.bench_function("point_select_hit", |b| {
        b.iter(|| warm.classify(black_box(POINT)))
    });
    c.bench_function("fingerprint_only", |b| {
        b.iter(|| Classifier::fingerprint(black_box(POINT)))
    });
    // Capacity 0 disables the cache: every call takes the miss path.
    let cold = Classifier::new(&[], 1 << 20, 0);
    let per_miss = allocations_per_call(|| {
        black_box(cold.classify(black_box(POINT)));
    });
    println!("allocations per point-select miss: {per_miss}");
    c.bench_function("point_select_miss", |b| {
        b.iter(|| cold.classify(black_box(POINT)))
    });
    c.bench_function("analytic_miss", |b| {
        b.iter(|| cold.classify(black_box(ANALYTIC)))
    });
    warm.classify(ANALYTIC);
    c.bench_function("analytic_hit", |b| {
        b.iter(|| warm.classify(black_box(ANALYTIC)))
    });
}

criterion_group!(classify, benches);
criterion_main!(classify);
