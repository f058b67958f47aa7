//! Unit tests of `crate::auth_query`: row parsing and the verifier cache.

use super::*;
use sluice_protocol::backend::encode_data_row;
use sluice_protocol::frame::split_message;
use std::sync::atomic::{AtomicUsize, Ordering};

fn row(values: &[Option<&str>]) -> BytesMut {
    let mut buf = BytesMut::new();
    encode_data_row(&mut buf, values);
    split_message(&mut buf, 1 << 20).unwrap().unwrap().1
}

fn key(user: &str) -> Key {
    ("db".to_owned(), user.to_owned())
}

/// A fetch that counts its runs and answers `answer`.
async fn counted(runs: &AtomicUsize, answer: Answer) -> Result<Answer, LookupError> {
    runs.fetch_add(1, Ordering::SeqCst);
    Ok(answer)
}

#[test]
fn rows_give_the_second_column() {
    let verifier = "SCRAM-SHA-256$4096:c2FsdA==$a2V5:a2V5";
    assert_eq!(
        answer_of_row(&row(&[Some("alice"), Some(verifier)])).unwrap(),
        Answer::Found(verifier.to_owned())
    );
    assert_eq!(
        answer_of_row(&row(&[Some("alice"), None])).unwrap(),
        Answer::Unknown
    );
    assert_eq!(
        answer_of_row(&row(&[Some("alice"), Some("")])).unwrap(),
        Answer::Unknown
    );
    assert!(matches!(
        answer_of_row(&row(&[Some("alice")])),
        Err(LookupError::Shape(1))
    ));
    assert!(answer_of_row(b"\x00\x05").is_err());
}

#[tokio::test(start_paused = true)]
async fn answers_are_cached_for_the_ttl_then_fetched_again() {
    let cache = VerifierCache::new(Duration::from_secs(30), 10);
    let runs = AtomicUsize::new(0);
    let found = Answer::Found("md5abc".to_owned());
    for _ in 0..3 {
        let answer = cache
            .get_or_fetch(key("alice"), || counted(&runs, found.clone()))
            .await;
        assert_eq!(answer.unwrap(), found);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    tokio::time::advance(Duration::from_secs(31)).await;
    let changed = Answer::Found("md5def".to_owned());
    let answer = cache
        .get_or_fetch(key("alice"), || counted(&runs, changed.clone()))
        .await;
    assert_eq!(answer.unwrap(), changed);
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn unknown_roles_are_cached_too() {
    let cache = VerifierCache::new(Duration::from_secs(1), 10);
    let runs = AtomicUsize::new(0);
    for _ in 0..2 {
        let answer = cache
            .get_or_fetch(key("ghost"), || counted(&runs, Answer::Unknown))
            .await;
        assert_eq!(answer.unwrap(), Answer::Unknown);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    tokio::time::advance(Duration::from_secs(1)).await;
    let created = Answer::Found("md5abc".to_owned());
    let answer = cache
        .get_or_fetch(key("ghost"), || counted(&runs, created.clone()))
        .await;
    assert_eq!(answer.unwrap(), created);
}

#[tokio::test]
async fn failures_are_not_cached() {
    let cache = VerifierCache::new(Duration::from_secs(30), 10);
    let failed = cache
        .get_or_fetch(key("alice"), || async {
            Err(LookupError::Read(ReadError::Closed))
        })
        .await;
    assert!(failed.is_err());
    let runs = AtomicUsize::new(0);
    let answer = cache
        .get_or_fetch(key("alice"), || counted(&runs, Answer::Unknown))
        .await;
    assert_eq!(answer.unwrap(), Answer::Unknown);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_cache_keeps_at_most_its_capacity_dropping_the_oldest() {
    let cache = VerifierCache::new(Duration::from_secs(30), 3);
    let runs = AtomicUsize::new(0);
    for user in ["a", "b", "c", "d"] {
        let _ = cache
            .get_or_fetch(key(user), || counted(&runs, Answer::Unknown))
            .await;
    }
    assert_eq!(cache.len(), 3);
    assert_eq!(runs.load(Ordering::SeqCst), 4);
    // "d" is still cached, "a" (the oldest) was evicted.
    let _ = cache
        .get_or_fetch(key("d"), || counted(&runs, Answer::Unknown))
        .await;
    assert_eq!(runs.load(Ordering::SeqCst), 4);
    let _ = cache
        .get_or_fetch(key("a"), || counted(&runs, Answer::Unknown))
        .await;
    assert_eq!(runs.load(Ordering::SeqCst), 5);
    assert_eq!(cache.len(), 3);
}

#[tokio::test(start_paused = true)]
async fn replaced_entries_do_not_pile_up_in_the_eviction_order() {
    let cache = VerifierCache::new(Duration::from_millis(1), 2);
    let runs = AtomicUsize::new(0);
    for _ in 0..50 {
        let _ = cache
            .get_or_fetch(key("a"), || counted(&runs, Answer::Unknown))
            .await;
        tokio::time::advance(Duration::from_millis(2)).await;
    }
    assert_eq!(runs.load(Ordering::SeqCst), 50);
    let order = cache.state.lock().unwrap().order.len();
    assert!(order <= 4, "{order} entries in the eviction order");
}

#[tokio::test(start_paused = true)]
async fn concurrent_misses_for_one_user_run_one_fetch() {
    let cache = Arc::new(VerifierCache::new(Duration::from_secs(30), 10));
    let runs = Arc::new(AtomicUsize::new(0));
    let lookups: Vec<_> = (0..8)
        .map(|_| {
            let (cache, runs) = (cache.clone(), runs.clone());
            tokio::spawn(async move {
                cache
                    .get_or_fetch(key("alice"), || async {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Ok(Answer::Found("md5abc".to_owned()))
                    })
                    .await
            })
        })
        .collect();
    for lookup in lookups {
        assert_eq!(
            lookup.await.unwrap().unwrap(),
            Answer::Found("md5abc".to_owned())
        );
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}
