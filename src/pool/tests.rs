//! Unit tests of a tenant's pool against a scripted server (no PostgreSQL): reuse, the
//! FIFO queue of waiters, `pool_size` and the cluster budget, checkouts dropped at each of
//! their await points, failed openings, expiry, retirement and warming.
//!
//! Time is real: the pool stamps connections with `std::time::Instant`, which tokio's
//! paused clock does not move, and the sockets are real. Where a test needs a connection
//! to be old it backdates the stamp instead of waiting.

use super::*;
use crate::config;
use crate::server::ServerCredentials;
use crate::test_support::{poll_once, within, AfterLogin, HeldLogin, Login, ScriptedServer};
use figment::providers::{Format, Toml};
use figment::Figment;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

/// A client's wait for a connection: never reached in these tests.
const WAIT: Duration = Duration::from_secs(5);

async fn scripted() -> ScriptedServer {
    ScriptedServer::start(AfterLogin::StayIdle).await
}

/// A cluster at `server`, built from settings as the configuration file gives them.
fn cluster(server: &ScriptedServer, max_server_connections: u32) -> Arc<Cluster> {
    paced_cluster(server, max_server_connections, 0)
}

fn paced_cluster(
    server: &ScriptedServer,
    max_server_connections: u32,
    max_connects_per_second: u32,
) -> Arc<Cluster> {
    let toml = format!(
        r#"
        host = "127.0.0.1"
        port = {port}
        max_server_connections = {max_server_connections}
        max_connects_per_second = {max_connects_per_second}
        tls = "disable"
        "#,
        port = server.addr.port()
    );
    let settings: config::Cluster = Figment::from(Toml::string(&toml))
        .extract()
        .unwrap_or_else(|e| panic!("{e}"));
    Cluster::new("main", &settings).unwrap()
}

fn limits(size: usize) -> Limits {
    Limits {
        size,
        reserve_size: 0,
        reserve_timeout: Duration::from_secs(5),
        lifetime: Duration::ZERO,
    }
}

/// A tenant's pool on `cluster`; the scripted server lets any role in.
fn pool(cluster: &Arc<Cluster>, limits: Limits) -> Arc<Pool> {
    let target = ServerTarget {
        host: cluster.host.clone(),
        port: cluster.port,
        database: "acme".into(),
        user: "acme".into(),
        credentials: ServerCredentials::None,
        connect_timeout: WAIT,
    };
    let shared = Shared {
        cluster: cluster.clone(),
        stats: Arc::new(TenantStats::default()),
        servers: Arc::new(ServerRegistry::default()),
    };
    Pool::new(target, shared, limits)
}

fn leased(result: Result<Lease, CheckoutError>) -> Lease {
    result.unwrap_or_else(|e| panic!("checkout failed: {e}"))
}

/// What the tests read of a pool's state.
impl Pool {
    fn waiters(&self) -> usize {
        self.lock().waiters.len()
    }

    fn opening(&self) -> usize {
        self.lock().opening
    }
}

/// Asserts that nothing leaked: the budget's places in use are exactly the `open`
/// connections the server still has, each counted in one of `pools`; no client waits,
/// no connection is being opened, and no pool waits in the budget's queue.
async fn assert_settled(
    server: &ScriptedServer,
    cluster: &Cluster,
    pools: &[&Arc<Pool>],
    open: usize,
) {
    server.wait_open(open).await;
    assert_eq!(cluster.budget.used(), open, "budget places in use");
    let counted: usize = pools.iter().map(|pool| pool.status().size).sum();
    assert_eq!(counted, open, "places the pools count");
    assert_eq!(cluster.budget.queued(), 0, "pools queued for the budget");
    for pool in pools {
        assert_eq!(pool.waiters(), 0, "waiters left");
        assert_eq!(pool.opening(), 0, "openings left");
    }
}

/// Drives `checkout` until the scripted server holds its login (planned as
/// `Login::Hold`): the checkout is then inside `connect`.
async fn until_held<F: Future<Output = Result<Lease, CheckoutError>>>(
    server: &mut ScriptedServer,
    checkout: Pin<&mut F>,
) -> HeldLogin {
    tokio::select! {
        held = server.next_held() => held,
        result = checkout => panic!("the checkout ended during a held login (ok: {})", result.is_ok()),
    }
}

#[tokio::test]
async fn an_empty_pool_opens_a_connection_and_reuses_it_once_returned() {
    let server = scripted().await;
    let cluster = cluster(&server, 10);
    let pool = pool(&cluster, limits(2));
    let first = leased(pool.checkout(WAIT).await);
    let pid = first.cancel_key.pid;
    assert_eq!(server.counts().logins, 1);
    let status = pool.status();
    assert_eq!((status.size, status.available, status.active), (1, 0, 1));
    drop(first);
    let status = pool.status();
    assert_eq!((status.size, status.available, status.active), (1, 1, 0));
    let again = leased(pool.checkout(WAIT).await);
    assert_eq!(again.cancel_key.pid, pid, "the idle connection is reused");
    assert_eq!(server.counts().logins, 1, "no new connection was opened");
    drop(again);
    assert_settled(&server, &cluster, &[&pool], 1).await;
}

#[tokio::test]
async fn idle_connections_are_reused_most_recently_returned_first() {
    let server = scripted().await;
    let cluster = cluster(&server, 10);
    let pool = pool(&cluster, limits(2));
    let older = leased(pool.checkout(WAIT).await);
    let newer = leased(pool.checkout(WAIT).await);
    let newer_pid = newer.cancel_key.pid;
    drop(older);
    drop(newer);
    let reused = leased(pool.checkout(WAIT).await);
    assert_eq!(reused.cancel_key.pid, newer_pid, "the hot connection first");
    assert_eq!(server.counts().logins, 2);
}

#[tokio::test]
async fn waiters_are_served_first_come_first_served_by_returned_connections() {
    let server = scripted().await;
    let cluster = cluster(&server, 10);
    let pool = pool(&cluster, limits(1));
    let lease = leased(pool.checkout(WAIT).await);
    let pid = lease.cancel_key.pid;
    let mut first = Box::pin(pool.checkout(WAIT));
    let mut second = Box::pin(pool.checkout(WAIT));
    assert!(poll_once(first.as_mut()).await.is_pending());
    assert!(poll_once(second.as_mut()).await.is_pending());
    assert_eq!(pool.waiters(), 2);

    drop(lease);
    assert_eq!(pool.status().available, 0, "handed over, not kept idle");
    assert_eq!(pool.waiters(), 1);
    assert!(
        poll_once(second.as_mut()).await.is_pending(),
        "the second waiter is not served before the first"
    );
    let first_lease = leased(within("the first waiter", first).await);
    assert_eq!(first_lease.cancel_key.pid, pid);

    drop(first_lease);
    let second_lease = leased(within("the second waiter", second).await);
    assert_eq!(second_lease.cancel_key.pid, pid);
    assert_eq!(server.counts().logins, 1, "one connection served all three");
    drop(second_lease);
    assert_settled(&server, &cluster, &[&pool], 1).await;
}

#[tokio::test]
async fn pool_size_is_never_exceeded() {
    let server = scripted().await;
    let cluster = cluster(&server, 10);
    let pool = pool(&cluster, limits(2));
    let a = leased(pool.checkout(WAIT).await);
    let b = leased(pool.checkout(WAIT).await);
    let mut third = Box::pin(pool.checkout(WAIT));
    assert!(
        poll_once(third.as_mut()).await.is_pending(),
        "the pool is full"
    );
    assert_eq!(server.counts().logins, 2);
    assert_eq!(cluster.budget.used(), 2);
    assert_eq!(pool.status().size, 2);
    let a_pid = a.cancel_key.pid;
    drop(a);
    let c = leased(within("the waiter", third).await);
    assert_eq!(c.cancel_key.pid, a_pid);
    assert_eq!(server.counts().logins, 2, "no third connection");
    drop((b, c));
    assert_settled(&server, &cluster, &[&pool], 2).await;
}

#[tokio::test]
async fn a_tenant_queued_for_a_full_budget_evicts_another_tenants_idle_connection() {
    let server = scripted().await;
    let cluster = cluster(&server, 1);
    let first_tenant = pool(&cluster, limits(5));
    let second_tenant = pool(&cluster, limits(5));
    drop(leased(first_tenant.checkout(WAIT).await));
    assert_eq!(first_tenant.status().available, 1);

    let mut queued = Box::pin(second_tenant.checkout(WAIT));
    assert!(poll_once(queued.as_mut()).await.is_pending());
    assert!(second_tenant.membership.is_queued());
    assert_eq!(cluster.budget.queued(), 1);
    assert_eq!(cluster.budget.used(), 1, "the budget is not exceeded");
    // The idle connection is younger than YIELD_AFTER, and each tenant's fair share of
    // a budget of 1 is less than a connection: the first try to make room spares it, a
    // retry RETRY_MAKE_ROOM later closes it.
    assert_eq!(first_tenant.status().available, 1);

    let lease = leased(within("the eviction", queued).await);
    assert_eq!(
        first_tenant.status().size,
        0,
        "the idle connection was evicted"
    );
    assert_eq!(cluster.budget.used(), 1);
    assert_eq!(server.counts().logins, 2);
    drop(lease);
    assert_settled(&server, &cluster, &[&first_tenant, &second_tenant], 1).await;
}

#[tokio::test]
async fn a_checkout_dropped_while_waiting_leaves_no_waiter() {
    let server = scripted().await;
    let cluster = cluster(&server, 10);
    let pool = pool(&cluster, limits(1));
    let lease = leased(pool.checkout(WAIT).await);
    let mut waiting = Box::pin(pool.checkout(WAIT));
    assert!(poll_once(waiting.as_mut()).await.is_pending());
    assert_eq!(pool.waiters(), 1);
    drop(waiting);
    assert_eq!(pool.waiters(), 0);
    drop(lease);
    assert_eq!(
        pool.status().available,
        1,
        "returned to the pool, not to the gone waiter"
    );
    assert_settled(&server, &cluster, &[&pool], 1).await;
    drop(leased(pool.checkout(WAIT).await));
    assert_eq!(server.counts().logins, 1);
}

#[tokio::test]
async fn a_checkout_dropped_while_queued_for_the_budget_leaks_no_place() {
    let server = scripted().await;
    let cluster = cluster(&server, 1);
    let first_tenant = pool(&cluster, limits(1));
    let second_tenant = pool(&cluster, limits(1));
    let lease = leased(first_tenant.checkout(WAIT).await);
    let mut queued = Box::pin(second_tenant.checkout(WAIT));
    assert!(poll_once(queued.as_mut()).await.is_pending());
    drop(queued);
    assert_eq!(second_tenant.waiters(), 0);
    // The place freed next stays free: no client of either tenant waits for it.
    lease.close();
    assert_eq!(second_tenant.status().size, 0);
    assert_eq!(cluster.budget.queued(), 0);
    assert_settled(&server, &cluster, &[&first_tenant, &second_tenant], 0).await;
    drop(leased(second_tenant.checkout(WAIT).await));
    assert_settled(&server, &cluster, &[&first_tenant, &second_tenant], 1).await;
}

#[tokio::test]
async fn a_checkout_dropped_during_login_frees_its_place() {
    let mut server = scripted().await;
    server.plan([Login::Hold]);
    let cluster = cluster(&server, 10);
    let pool = pool(&cluster, limits(1));
    let mut checkout = Box::pin(pool.checkout(WAIT));
    let _held = until_held(&mut server, checkout.as_mut()).await;
    assert_eq!(pool.opening(), 1);
    assert_eq!(cluster.budget.used(), 1);
    drop(checkout);
    assert_settled(&server, &cluster, &[&pool], 0).await;
    drop(leased(pool.checkout(WAIT).await));
    assert_eq!(server.counts().logins, 2);
    assert_settled(&server, &cluster, &[&pool], 1).await;
}

#[tokio::test]
async fn a_waiter_gets_the_place_of_a_login_given_up() {
    let mut server = scripted().await;
    server.plan([Login::Hold]);
    let cluster = cluster(&server, 10);
    let pool = pool(&cluster, limits(1));
    let mut opening = Box::pin(pool.checkout(WAIT));
    let _held = until_held(&mut server, opening.as_mut()).await;
    let mut waiting = Box::pin(pool.checkout(WAIT));
    assert!(poll_once(waiting.as_mut()).await.is_pending());
    drop(opening);
    let lease = leased(within("the waiter", waiting).await);
    assert_eq!(server.counts().logins, 2, "the waiter opened its own");
    drop(lease);
    assert_settled(&server, &cluster, &[&pool], 1).await;
}

#[tokio::test]
async fn a_checkout_dropped_while_paced_frees_its_place() {
    let server = scripted().await;
    // One opening a second: the first goes at once, the second waits its turn.
    let cluster = paced_cluster(&server, 10, 1);
    let pool = pool(&cluster, limits(2));
    let lease = leased(pool.checkout(WAIT).await);
    let mut paced = Box::pin(pool.checkout(WAIT));
    assert!(poll_once(paced.as_mut()).await.is_pending());
    assert_eq!(pool.opening(), 1);
    assert_eq!(cluster.budget.used(), 2);
    drop(paced);
    assert_eq!(server.counts().logins, 1);
    drop(lease);
    assert_settled(&server, &cluster, &[&pool], 1).await;
}

#[tokio::test]
async fn a_connection_granted_to_a_dropped_waiter_goes_to_the_next_one_or_back_to_idle() {
    let server = scripted().await;
    let cluster = cluster(&server, 10);
    let pool = pool(&cluster, limits(1));
    let lease = leased(pool.checkout(WAIT).await);
    let pid = lease.cancel_key.pid;
    let mut gone = Box::pin(pool.checkout(WAIT));
    let mut next = Box::pin(pool.checkout(WAIT));
    assert!(poll_once(gone.as_mut()).await.is_pending());
    assert!(poll_once(next.as_mut()).await.is_pending());
    // Granted to the first waiter, which goes before it looks.
    drop(lease);
    assert_eq!(pool.waiters(), 1);
    drop(gone);
    let lease = match poll_once(next.as_mut()).await {
        Poll::Ready(result) => leased(result),
        Poll::Pending => panic!("the connection did not pass to the next waiter"),
    };
    assert_eq!(lease.cancel_key.pid, pid);

    let mut gone = Box::pin(pool.checkout(WAIT));
    assert!(poll_once(gone.as_mut()).await.is_pending());
    drop(lease);
    drop(gone);
    assert_eq!(
        pool.status().available,
        1,
        "with no one else waiting, it is idle"
    );
    assert_settled(&server, &cluster, &[&pool], 1).await;
    drop(leased(pool.checkout(WAIT).await));
    assert_eq!(server.counts().logins, 1);
}

#[tokio::test]
async fn a_place_granted_to_a_dropped_waiter_is_given_back() {
    let server = scripted().await;
    let cluster = cluster(&server, 10);
    let pool = pool(&cluster, limits(1));
    let lease = leased(pool.checkout(WAIT).await);
    let mut gone = Box::pin(pool.checkout(WAIT));
    assert!(poll_once(gone.as_mut()).await.is_pending());
    // The connection closes instead of coming back: its waiter gets a place to open one.
    lease.close();
    assert_eq!(pool.waiters(), 0, "the place went to the waiter");
    assert_eq!(pool.status().size, 1);
    assert_eq!(cluster.budget.used(), 1);
    drop(gone);
    assert_settled(&server, &cluster, &[&pool], 0).await;
    drop(leased(pool.checkout(WAIT).await));
    assert_settled(&server, &cluster, &[&pool], 1).await;
}

#[tokio::test]
async fn a_budget_place_granted_to_a_dropped_waiter_is_given_back() {
    let server = scripted().await;
    let cluster = cluster(&server, 1);
    let first_tenant = pool(&cluster, limits(1));
    let second_tenant = pool(&cluster, limits(1));
    let lease = leased(first_tenant.checkout(WAIT).await);
    let mut gone = Box::pin(second_tenant.checkout(WAIT));
    assert!(poll_once(gone.as_mut()).await.is_pending());
    lease.close();
    assert_eq!(
        second_tenant.status().size,
        1,
        "the budget handed the place over"
    );
    assert_eq!(second_tenant.waiters(), 0);
    drop(gone);
    assert_eq!(cluster.budget.queued(), 0);
    assert_settled(&server, &cluster, &[&first_tenant, &second_tenant], 0).await;
    drop(leased(second_tenant.checkout(WAIT).await));
    assert_settled(&server, &cluster, &[&first_tenant, &second_tenant], 1).await;
}

#[tokio::test]
async fn a_failed_login_with_nothing_open_fails_every_waiter_at_once() {
    let mut server = scripted().await;
    server.plan([Login::Hold]);
    let cluster = cluster(&server, 10);
    let pool = pool(&cluster, limits(1));
    let mut opening = Box::pin(pool.checkout(WAIT));
    let held = until_held(&mut server, opening.as_mut()).await;
    let mut waiting = Box::pin(pool.checkout(WAIT));
    assert!(poll_once(waiting.as_mut()).await.is_pending());
    held.refuse();
    let opened = within("the refused login", opening).await;
    let Err(CheckoutError::Connect(cause)) = opened else {
        panic!("the opening did not fail as refused");
    };
    assert!(
        matches!(&*cause, ConnectError::Rejected { code, .. } if code == "57P03"),
        "{cause}"
    );
    match poll_once(waiting.as_mut()).await {
        Poll::Ready(Err(CheckoutError::Connect(told))) => {
            assert!(
                Arc::ptr_eq(&told, &cause),
                "the waiter learns the same cause"
            );
        }
        Poll::Ready(_) => panic!("the waiter did not get the connect error"),
        Poll::Pending => panic!("the waiter still waits"),
    }
    assert_eq!(server.counts().logins, 1, "no one tried again");
    assert_settled(&server, &cluster, &[&pool], 0).await;
}

#[tokio::test]
async fn a_failed_login_does_not_fail_waiters_while_a_connection_is_open() {
    let mut server = scripted().await;
    let cluster = cluster(&server, 10);
    let pool = pool(&cluster, limits(2));
    let established = leased(pool.checkout(WAIT).await);
    server.plan([Login::Hold]);
    let mut opening = Box::pin(pool.checkout(WAIT));
    let held = until_held(&mut server, opening.as_mut()).await;
    let mut waiting = Box::pin(pool.checkout(WAIT));
    assert!(poll_once(waiting.as_mut()).await.is_pending());
    server.plan([Login::Hold]);
    held.refuse();
    assert!(within("the refused login", opening).await.is_err());
    // Not failed: the waiter opens a connection of its own in the freed place.
    until_held(&mut server, waiting.as_mut()).await.accept();
    let lease = leased(within("the waiter", waiting).await);
    assert_eq!(server.counts().logins, 3);
    drop((established, lease));
    assert_settled(&server, &cluster, &[&pool], 2).await;
}

#[tokio::test]
async fn close_expired_closes_idle_connections_past_the_idle_timeout_or_the_lifetime() {
    let server = scripted().await;
    let cluster = cluster(&server, 10);
    let lifetime = Duration::from_secs(60);
    let pool = pool(
        &cluster,
        Limits {
            lifetime,
            ..limits(3)
        },
    );
    let mut leases = Vec::new();
    for _ in 0..3 {
        leases.push(leased(pool.checkout(WAIT).await));
    }
    let kept_pid = leases[2].cancel_key.pid;
    // Returned in order: idle[0] is the first.
    for lease in leases {
        drop(lease);
    }
    let idle_timeout = Duration::from_secs(30);
    assert_eq!(
        pool.close_expired(idle_timeout),
        0,
        "nothing has expired yet"
    );
    {
        let mut state = pool.lock();
        state.idle[0].since -= 2 * idle_timeout;
        state.idle[1].conn.conn.opened_at -= 2 * lifetime;
    }
    assert_eq!(pool.close_expired(idle_timeout), 2);
    assert_eq!(pool.status().available, 1);
    assert_eq!(pool.lock().idle[0].conn.conn.cancel_key.pid, kept_pid);
    assert_settled(&server, &cluster, &[&pool], 1).await;
}

#[tokio::test]
async fn a_connection_past_its_lifetime_is_closed_when_returned() {
    let server = scripted().await;
    let cluster = cluster(&server, 10);
    let lifetime = Duration::from_secs(60);
    let pool = pool(
        &cluster,
        Limits {
            lifetime,
            ..limits(1)
        },
    );
    let mut lease = leased(pool.checkout(WAIT).await);
    lease.opened_at -= 2 * lifetime;
    drop(lease);
    assert_settled(&server, &cluster, &[&pool], 0).await;
    drop(leased(pool.checkout(WAIT).await));
    assert_eq!(server.counts().logins, 2);
}

#[tokio::test]
async fn retire_closes_idle_connections_now_and_leased_ones_on_return() {
    let server = scripted().await;
    let cluster = cluster(&server, 10);
    let pool = pool(&cluster, limits(2));
    let idle = leased(pool.checkout(WAIT).await);
    let busy = leased(pool.checkout(WAIT).await);
    drop(idle);
    pool.retire();
    assert_eq!(pool.status().available, 0);
    assert_settled(&server, &cluster, &[&pool], 1).await;
    drop(busy);
    assert_settled(&server, &cluster, &[&pool], 0).await;
    pool.warm(2).await.unwrap();
    assert_eq!(server.counts().logins, 2, "a retired pool is not warmed");
}

#[tokio::test]
async fn warm_opens_connections_up_to_the_minimum_from_spare_places_only() {
    let server = scripted().await;
    let cluster = cluster(&server, 3);
    let first_tenant = pool(&cluster, limits(5));
    let second_tenant = pool(&cluster, limits(5));
    first_tenant.warm(2).await.unwrap();
    assert_eq!(first_tenant.status().available, 2);
    // One place is left: warming takes it and does not queue for more.
    second_tenant.warm(2).await.unwrap();
    assert_eq!(second_tenant.status().available, 1);
    assert_eq!(cluster.budget.queued(), 0);
    assert_settled(&server, &cluster, &[&first_tenant, &second_tenant], 3).await;
}

#[tokio::test]
async fn a_checkout_given_up_while_queued_for_the_budget_leaves_its_queue() {
    let server = scripted().await;
    let cluster = cluster(&server, 1);
    let first_tenant = pool(&cluster, limits(1));
    let second_tenant = pool(&cluster, limits(1));
    let mut lease = leased(first_tenant.checkout(WAIT).await);
    let mut queued = Box::pin(second_tenant.checkout(WAIT));
    assert!(poll_once(queued.as_mut()).await.is_pending());
    // The client stops waiting (it disconnected, or query_wait_timeout fired).
    drop(queued);
    assert_eq!(
        cluster.budget.queued(),
        0,
        "no client of the second tenant waits for a place any more"
    );
    // So the first tenant, alone with its demand, keeps its connection when it is
    // returned, even one it has had longer than YIELD_AFTER.
    lease.opened_at -= 2 * YIELD_AFTER;
    drop(lease);
    assert_eq!(first_tenant.status().available, 1, "yielded to no one");
}

#[tokio::test]
async fn a_failed_login_that_fails_its_waiters_takes_the_pool_out_of_the_budget_queue() {
    let mut server = scripted().await;
    let cluster = cluster(&server, 2);
    let failing = pool(&cluster, limits(2));
    let other = pool(&cluster, limits(1));
    let third = pool(&cluster, limits(1));
    let held_by_third = leased(third.checkout(WAIT).await);
    server.plan([Login::Hold]);
    let mut opening = Box::pin(failing.checkout(WAIT));
    let held = until_held(&mut server, opening.as_mut()).await;
    // The budget is full: first `other`, then `failing` queue for a place.
    let mut other_waiting = Box::pin(other.checkout(WAIT));
    assert!(poll_once(other_waiting.as_mut()).await.is_pending());
    let mut failing_waiting = Box::pin(failing.checkout(WAIT));
    assert!(poll_once(failing_waiting.as_mut()).await.is_pending());
    assert_eq!(cluster.budget.queued(), 2);

    held.refuse();
    assert!(within("the refused login", opening).await.is_err());
    assert!(matches!(
        poll_once(failing_waiting.as_mut()).await,
        Poll::Ready(Err(CheckoutError::Connect(_)))
    ));
    // The freed place went to `other`, first in the queue; `failing` has no client
    // waiting any more, so it does not wait for a place either.
    let lease = leased(within("the other tenant", other_waiting).await);
    assert_eq!(cluster.budget.queued(), 0);
    drop((lease, held_by_third));
    assert_settled(&server, &cluster, &[&failing, &other, &third], 2).await;
}
