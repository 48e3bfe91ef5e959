//! What a rate limit costs a request in memory (`[shared] backend = "memory"`): one GCRA
//! step of a budget already in the table (a caller's steady state), of a fresh one (its
//! first request), and a look (`explain`). The bound: at most 1 µs a request.
//! With Redis the step is one script in the request's round trip (two limits: two
//! scripts in flight at once), measured by the load harness, not here.
//!
//! `cargo bench --bench rate`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis::shared::{Budget, Cell, MemoryRates, RATE_TABLE_CAP};

fn bench(c: &mut Criterion) {
    // 1000 requests a second, burst 100: the budget never runs out in the loop below
    // faster than it refills, and when it does the step costs the same.
    let cell = Cell {
        interval: 1_000,
        burst: 100,
    };
    let rates = MemoryRates::new(RATE_TABLE_CAP, Default::default(), None);
    // 10 000 live budgets, as for as many principals.
    let budget = |name: String| Budget {
        name,
        by_address: false,
    };
    let keys: Vec<Budget> = (0..10_000)
        .map(|i| budget(format!("plan\0p\0\0principal\0\0user-{i}")))
        .collect();
    for k in &keys {
        let _ = rates.step_now(k, cell, true);
    }
    let mut g = c.benchmark_group("rate");
    let mut i = 0usize;
    g.bench_function("step, budget in the table", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(rates.step_now(black_box(&keys[i]), cell, true))
        })
    });
    g.bench_function("look (explain)", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(rates.step_now(black_box(&keys[i]), cell, false))
        })
    });
    let fresh = MemoryRates::new(RATE_TABLE_CAP, Default::default(), None);
    let mut n = 0u64;
    g.bench_function("step, fresh budget", |b| {
        b.iter(|| {
            n += 1;
            // Past the cap the table forgets full budgets: the cost of that sweep is in.
            black_box(fresh.step_now(&budget(format!("plan\0p\0\0principal\0\0new-{n}")), cell, true))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
