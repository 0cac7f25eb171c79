//! One QUIC connection: hello and version negotiation, then the publisher loop or
//! the subscriber loop. Errors end this connection only, with a close code and a
//! reason; the edge goes on.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ferry_proto::{
    check_session, ErrorCode, Hello, Message, Role, StreamName, TrackName, MAX_CONTROL_MESSAGE,
    MAX_PROTOCOL_VERSION, MIN_PROTOCOL_VERSION,
};
use quinn::{Connection, RecvStream, SendStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::deliver::{Delivery, DeliveryEnd};
use super::EdgeState;
use crate::access::Credential;
use crate::auth::{Action, AuthError};
use crate::metrics::{RoleLabels, SubscriptionLabels};
use crate::rollouts::Assignment;
use crate::track::LagBudget;
use crate::{Error, Result};
use ferry_net::wire::{pump_control, read_message, write_message};

/// Time a client gets to finish the handshake and say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Control messages queued per connection in each direction.
const CONTROL_QUEUE: usize = 64;
/// Longest close reason we send (a close frame must fit one packet).
const MAX_REASON: usize = 200;
/// A subscriber joining a group older than this starts with that much backlog; ask
/// the source for a fresh keyframe (throttled per track) so the next joiners do not.
const KEYFRAME_ON_JOIN_AGE: Duration = Duration::from_millis(500);

/// Serves one incoming connection to its end.
/// Serves one connection whose handshake finished, until it ends.
pub async fn run(state: Arc<EdgeState>, conn: quinn::Connection, session: u64) {
    let cancel = state.shutdown.child_token();
    let result = serve(&state, &conn, session, &cancel).await;
    cancel.cancel();
    match result {
        Ok(()) => conn.close(ErrorCode::NoError.as_u32().into(), b""),
        Err(e) if is_peer_gone(&e) => {}
        Err(e) => {
            let code = e.code();
            // A clean close the edge chose (an idle viewer) is counted by its reason.
            if code != ErrorCode::NoError {
                state.metrics.error(code);
            }
            tracing::info!(session, peer = %conn.remote_address(), %code, error = %ferry_net::Chain(&e), "closing connection");
            // A refusal's reason is its message (`token_expired: ...`); other errors
            // say what failed.
            let mut reason = match &e {
                Error::Net(ferry_net::Error::Refused { message, .. }) => message.clone(),
                _ => ferry_net::Chain(&e).to_string(),
            };
            // On a character boundary: truncating inside one panics.
            let mut end = MAX_REASON.min(reason.len());
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
            conn.close(code.as_u32().into(), reason.as_bytes());
        }
    }
}

fn is_peer_gone(e: &Error) -> bool {
    matches!(
        e,
        Error::Net(
            ferry_net::Error::Connection(_)
                | ferry_net::Error::Read(quinn::ReadError::ConnectionLost(_))
                | ferry_net::Error::Write(quinn::WriteError::ConnectionLost(_))
        )
    )
}

/// Picks the newest version both sides speak.
fn negotiate(hello: &Hello) -> Result<u16> {
    let version = hello.max_version.min(MAX_PROTOCOL_VERSION);
    if version < hello.min_version.max(MIN_PROTOCOL_VERSION) {
        return Err(Error::refused(
            ErrorCode::UnsupportedVersion,
            format!(
                "client speaks {}..={}, edge speaks {MIN_PROTOCOL_VERSION}..={MAX_PROTOCOL_VERSION}",
                hello.min_version, hello.max_version
            ),
        ));
    }
    Ok(version)
}

/// Decrements a gauge when dropped.
struct GaugeGuard(prometheus_client::metrics::gauge::Gauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn hold(gauge: prometheus_client::metrics::gauge::Gauge) -> GaugeGuard {
    gauge.inc();
    GaugeGuard(gauge)
}

async fn serve(
    state: &Arc<EdgeState>,
    conn: &Connection,
    session: u64,
    cancel: &CancellationToken,
) -> Result<()> {
    let (mut send, mut recv) = tokio::time::timeout(HELLO_TIMEOUT, conn.accept_bi())
        .await
        .map_err(|_| Error::timeout("the control stream"))??;
    let first = tokio::time::timeout(HELLO_TIMEOUT, read_message::<Message>(&mut recv, MAX_CONTROL_MESSAGE))
        .await
        .map_err(|_| Error::timeout("hello"))??;
    let hello = match first {
        Some((_, Message::Hello(hello))) => hello,
        Some((_, other)) => return Err(Error::protocol(format!("expected hello, got {}", other.kind()))),
        None => return Err(Error::protocol("control stream ended before hello")),
    };
    let version = negotiate(&hello)?;
    let credential = credential(state, conn, &hello)?;
    // Stream limits by role, in the transport: nobody opens a second bidirectional
    // stream, and only publishers send media (a unidirectional stream per group).
    conn.set_max_concurrent_bi_streams(1u32.into());
    if !matches!(hello.role, Role::Publisher) {
        conn.set_max_concurrent_uni_streams(0u32.into());
    }
    write_message(&mut send, version, &Message::HelloOk { version, node: state.config.node_id.clone() })
        .await?;
    let _conn_gauge =
        hold(state.metrics.connections.get_or_create(&RoleLabels { role: hello.role.name().into() }).clone());
    tracing::debug!(session, peer = %hello.node, role = hello.role.name(), version, "hello");

    let assignment = match hello.role {
        Role::Edge => Assignment::default(),
        Role::Publisher | Role::Viewer => place(state, &credential, &mut send, &mut recv, version).await?,
    };
    let (ctl_tx, ctl_rx) = mpsc::channel::<Message>(CONTROL_QUEUE);
    let (in_tx, in_rx) = mpsc::channel::<Result<Message>>(CONTROL_QUEUE);
    state.tracker.spawn(pump_control(send, ctl_rx, version, cancel.clone()));
    state.tracker.spawn(read_control(recv, in_tx, cancel.clone()));
    // A treatment's latency budget; each subscription's own request is its baseline.
    let config = &state.config;
    let lag = LagBudget::new(config.relay_max_lag, assignment.overrides.max_lag_ms, config.max_lag_cap);
    let ctx = Session {
        state: Arc::clone(state),
        conn: conn.clone(),
        session,
        version,
        ctl: ctl_tx,
        cancel,
        lag,
        buffer: assignment.buffer(state.config.buffer),
        credential,
    };
    let role = async {
        match hello.role {
            Role::Publisher => super::session_publish::run(&ctx, in_rx).await,
            Role::Viewer | Role::Edge => subscriber_loop(&ctx, hello.role, in_rx).await,
        }
    };
    let result = state.with_fallback(&assignment, &ctx.lag, role).await;
    // A mid-session error counts against the session's cohorts; a peer that left or
    // an edge that shuts down does not.
    if let Err(e) = &result {
        if !is_peer_gone(e) && !matches!(e.code(), ErrorCode::GoingAway | ErrorCode::NoError) {
            state.rollout_failed(&assignment, e.code().name());
        }
    }
    result
}

/// The credential a client's hello presents, checked before the session gets any
/// state. Relaying is internal traffic: an edge must present a cluster certificate
/// (or the edge allows anonymous peers, dev only). Publishers and viewers need a
/// token for their role: refused with `unauthorized` and the token's reason.
fn credential(state: &EdgeState, conn: &Connection, hello: &Hello) -> Result<Credential> {
    let access = &state.access;
    let action = match hello.role {
        Role::Edge => {
            // An edge with a cluster CA relays only to members; one without (dev)
            // only with --allow-anonymous.
            let allowed = match state.config.cluster_tls {
                Some(_) => ferry_net::tls::peer_has_cluster_cert(conn),
                None => access.allows_anonymous(),
            };
            if !allowed {
                state.metrics.auth_refused("relay_needs_cluster_certificate");
                return Err(Error::refused(
                    ErrorCode::Unauthorized,
                    "relay_needs_cluster_certificate: relaying needs a cluster certificate \
                     (--cluster-ca, --cluster-cert, --cluster-key; ferry ca issue)",
                ));
            }
            return Ok(Credential::Anonymous);
        }
        Role::Publisher => Action::Publish,
        Role::Viewer => Action::View,
    };
    let refuse = |e: AuthError| {
        state.metrics.auth_refused(e.reason());
        Error::refused(ErrorCode::Unauthorized, format!("{}: {e}", e.reason()))
    };
    let credential = access.check(hello.token.as_deref(), SystemTime::now()).map_err(refuse)?;
    if let Credential::Token { claims, .. } = &credential {
        if claims.action != action {
            return Err(refuse(AuthError::WrongAction { granted: claims.action, wanted: action }));
        }
    }
    Ok(credential)
}

/// Places a publisher or viewer in the rollouts: version 2 clients say who they are
/// first ([`Message::Session`]) and hear their variant; version 1 clients get a random
/// id. A token's session key (its `sub`) wins over the id the client says, so a
/// client cannot choose its own cohort. A session refused by a drill
/// (`fault.reject_sessions_bp`) is closed with `fault_injected`.
async fn place(
    state: &EdgeState,
    credential: &Credential,
    send: &mut SendStream,
    recv: &mut RecvStream,
    version: u16,
) -> Result<Assignment> {
    let (id, tags) = match version {
        1 => (format!("anonymous-{}", ferry_net::random::id()?), Vec::new()),
        _ => {
            let next =
                tokio::time::timeout(HELLO_TIMEOUT, read_message::<Message>(recv, MAX_CONTROL_MESSAGE))
                    .await
                    .map_err(|_| Error::timeout("session"))??;
            match next {
                Some((_, Message::Session { id, tags })) => {
                    check_session(&id, &tags).map_err(Error::protocol)?;
                    (id, tags)
                }
                Some((_, other)) => {
                    return Err(Error::protocol(format!("expected session, got {}", other.kind())))
                }
                None => return Err(Error::protocol("control stream ended before session")),
            }
        }
    };
    let id = credential.session_key().map_or(id, str::to_owned);
    let assignment = state.assign(&id, &tags);
    if let Some(rollout) = assignment.rejected_by(&id) {
        state.rollout_failed(&assignment, ErrorCode::FaultInjected.name());
        return Err(Error::refused(
            ErrorCode::FaultInjected,
            format!("refused by rollout {rollout:?}'s fault injection (a drill)"),
        ));
    }
    if version >= 2 {
        let variant = assignment.header().unwrap_or_default();
        let client_flag = assignment.overrides.client_flag.clone();
        write_message(send, version, &Message::SessionOk { variant, client_flag }).await?;
    }
    Ok(assignment)
}

/// What the role loops share.
pub(super) struct Session<'a> {
    pub state: Arc<EdgeState>,
    pub conn: Connection,
    pub session: u64,
    pub version: u16,
    pub ctl: mpsc::Sender<Message>,
    pub cancel: &'a CancellationToken,
    /// A rollout's treatment latency budget for this viewer's subscriptions (it falls
    /// back to each subscription's own request when the rollout stops treating it).
    pub lag: LagBudget,
    /// What the client's token grants (checked again for every stream it names).
    pub credential: Credential,
    /// The track buffer of a publisher's tracks (a rollout's `group_cache`).
    pub buffer: crate::track::BufferConfig,
}

impl Session<'_> {
    /// Sends GOAWAY and ends the session with `GoingAway`.
    pub async fn go_away(&self) -> Error {
        let _ = self.ctl.send(Message::GoAway { reason: "edge shutting down".into() }).await;
        Error::refused(ErrorCode::GoingAway, "edge shutting down")
    }
}

/// Reads control messages into a channel so the role loops can `select!` on them
/// (a message read is not cancel safe; a channel receive is).
async fn read_control(mut recv: RecvStream, tx: mpsc::Sender<Result<Message>>, cancel: CancellationToken) {
    loop {
        let next = tokio::select! {
            _ = cancel.cancelled() => return,
            next = read_message::<Message>(&mut recv, MAX_CONTROL_MESSAGE) => next,
        };
        let item = match next {
            Ok(Some((_, msg))) => Ok(msg),
            Ok(None) => return,
            Err(e) => Err(e.into()),
        };
        let stop = item.is_err();
        if tx.send(item).await.is_err() || stop {
            return;
        }
    }
}

async fn subscriber_loop(
    ctx: &Session<'_>,
    role: Role,
    mut in_rx: mpsc::Receiver<Result<Message>>,
) -> Result<()> {
    let limit = ctx.state.config.max_subscriptions_per_connection;
    let (done_tx, mut done_rx) = mpsc::channel::<(u64, DeliveryEnd)>(limit.max(1));
    let mut subs: HashMap<u64, CancellationToken> = HashMap::new();
    // Viewers with nothing to watch leave, so they do not hold connection permits.
    let idle_after = ctx.state.config.viewer_idle_timeout;
    let mut idle_since = tokio::time::Instant::now();
    loop {
        let idle = role == Role::Viewer && subs.is_empty();
        tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => return Err(ctx.go_away().await),
            _ = tokio::time::sleep_until(idle_since + idle_after), if idle => {
                ctx.state.metrics.connection_closed("idle");
                let message = format!("idle: no subscription for {} ms", idle_after.as_millis());
                return Err(Error::refused(ErrorCode::NoError, message));
            }
            Some((id, end)) = done_rx.recv() => {
                subs.remove(&id);
                if subs.is_empty() {
                    idle_since = tokio::time::Instant::now();
                }
                tracing::debug!(session = ctx.session, id, ?end, "subscription ended");
            }
            stream = ctx.conn.accept_uni() => {
                stream?;
                return Err(Error::protocol("subscribers must not open unidirectional streams"));
            }
            msg = in_rx.recv() => match msg {
                None => return Ok(()),
                Some(Err(e)) => return Err(e),
                Some(Ok(Message::Subscribe { id, stream, track, priority: _, max_lag_ms })) => {
                    if subs.contains_key(&id) {
                        return Err(Error::protocol(format!("subscription id {id} already in use")));
                    }
                    if let Err(e) = ctx.credential.permits(Action::View, stream.as_str()) {
                        ctx.state.metrics.auth_refused(e.reason());
                        let message = format!("{}: {e}", e.reason());
                        let code = ErrorCode::Unauthorized;
                        ctx.ctl.send(Message::SubscribeError { id, code, message }).await.ok();
                        continue;
                    }
                    if subs.len() >= limit {
                        ctx.state.metrics.error(ErrorCode::ServerBusy);
                        let message = format!("at most {limit} subscriptions per connection");
                        ctx.ctl.send(Message::SubscribeError { id, code: ErrorCode::ServerBusy, message }).await.ok();
                        continue;
                    }
                    let token = ctx.cancel.child_token();
                    subs.insert(id, token.clone());
                    let requested = match max_lag_ms {
                        0 => ctx.state.config.relay_max_lag,
                        ms => Duration::from_millis(ms.into()).min(ctx.state.config.max_lag_cap),
                    };
                    let lag = ctx.lag.with_baseline(requested);
                    let sub = Subscription { id, stream, track, lag, role };
                    ctx.state.tracker.spawn(run_subscription(ctx.clone_parts(), sub, token, done_tx.clone()));
                }
                Some(Ok(Message::Unsubscribe { id })) => {
                    if let Some(token) = subs.remove(&id) {
                        token.cancel();
                    }
                    if subs.is_empty() {
                        idle_since = tokio::time::Instant::now();
                    }
                }
                Some(Ok(Message::KeyframeRequest { stream, track })) => {
                    if let Some(producer) = ctx.state.registry.find(&stream, &track) {
                        if producer.request_keyframe() {
                            ctx.state.metrics.keyframe_requests.inc();
                        }
                    }
                }
                Some(Ok(Message::GoAway { .. })) => return Ok(()),
                Some(Ok(other)) => {
                    return Err(Error::protocol(format!("unexpected {} from a subscriber", other.kind())));
                }
            },
        }
    }
}

struct Subscription {
    id: u64,
    stream: StreamName,
    track: TrackName,
    lag: LagBudget,
    role: Role,
}

/// The owned parts a subscription task needs.
pub(super) struct Parts {
    state: Arc<EdgeState>,
    conn: Connection,
    ctl: mpsc::Sender<Message>,
    version: u16,
}

impl Session<'_> {
    fn clone_parts(&self) -> Parts {
        Parts {
            state: Arc::clone(&self.state),
            conn: self.conn.clone(),
            ctl: self.ctl.clone(),
            version: self.version,
        }
    }
}

async fn run_subscription(
    parts: Parts,
    sub: Subscription,
    cancel: CancellationToken,
    done: mpsc::Sender<(u64, DeliveryEnd)>,
) {
    let Parts { state, conn, ctl, version } = parts;
    let id = sub.id;
    let producer = tokio::select! {
        _ = cancel.cancelled() => {
            let _ = done.send((id, DeliveryEnd::Cancelled)).await;
            return;
        }
        found = find_track(&state, &sub.stream, &sub.track, sub.role == Role::Edge) => found,
    };
    let producer = match producer {
        Ok(producer) => producer,
        Err((code, message)) => {
            state.metrics.error(code);
            let _ = ctl.send(Message::SubscribeError { id, code, message }).await;
            let _ = done.send((id, DeliveryEnd::Cancelled)).await;
            return;
        }
    };
    let consumer = producer.subscribe(sub.lag.current());
    if producer.newest_group_age().is_some_and(|age| age > KEYFRAME_ON_JOIN_AGE)
        && producer.request_keyframe()
    {
        state.metrics.keyframe_requests.inc();
    }
    let _ = ctl.send(Message::SubscribeOk { id, track: producer.info().clone() }).await;
    let labels = SubscriptionLabels {
        stream: sub.stream.to_string(),
        track: sub.track.to_string(),
        role: sub.role.name().to_owned(),
    };
    let _gauge = state.metrics.subscriptions.hold(labels);
    let delivery = Delivery {
        conn,
        id,
        consumer,
        lag: sub.lag,
        metrics: state.metrics.clone(),
        role: sub.role.name(),
        version,
    };
    let end = delivery.run(cancel).await;
    if end == DeliveryEnd::TrackEnded {
        let message = "the publisher left".to_owned();
        let _ = ctl.send(Message::SubscribeDone { id, code: ErrorCode::TrackEnded, message }).await;
    }
    let _ = done.send((id, end)).await;
}

/// A local track, or the relayed one (`for_edge`: the subscriber is another edge).
pub async fn find_track(
    state: &Arc<EdgeState>,
    stream: &StreamName,
    track: &TrackName,
    for_edge: bool,
) -> std::result::Result<crate::track::TrackProducer, (ErrorCode, String)> {
    if let Some(producer) = state.registry.find(stream, track) {
        return Ok(producer);
    }
    state.upstreams.track(state, stream, track, for_edge).await
}
