//! What stands before every handler: the API token check, the admin rate limit and the
//! request timeout.
//!
//! A plain tower layer, like [`super::track`]: a request that passes costs a header
//! lookup and a hash, and nothing at all when authentication is off.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::{Method, header};
use axum::response::{IntoResponse, Response};
use tower::{Layer, Service};

use super::{ApiError, Node};
use crate::auth::{Authenticator, Denied, Scope};
use crate::metrics::Rejection;

/// The protections of the API; all off by default.
#[derive(Default)]
pub struct Protection {
    /// API tokens; `None`: every route is open.
    pub auth: Option<Authenticator>,
    /// Whether `/metrics` needs a `read` token (when auth is on).
    pub metrics_auth: bool,
    /// Admin calls allowed per second, in bursts of as many.
    pub admin_rate: Option<TokenBucket>,
    /// Longest a request may take, body reading included.
    pub request_timeout: Option<Duration>,
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Open,
    Needs(Scope),
}

/// The access a request needs, by method and path (DESIGN's routes; any other path
/// needs `read`, so that an unknown route tells nothing to whom holds no token).
pub fn access(method: &Method, path: &str, metrics_auth: bool) -> Access {
    match path {
        "/health" | "/ready" => Access::Open,
        "/metrics" if !metrics_auth => Access::Open,
        "/cluster/init" | "/cluster/members" => Access::Needs(Scope::Admin),
        _ if path.starts_with("/admin/") => Access::Needs(Scope::Admin),
        _ if path == "/cache" || path.starts_with("/cache/") => {
            if method == Method::GET || method == Method::HEAD {
                Access::Needs(Scope::Read)
            } else {
                Access::Needs(Scope::Write)
            }
        }
        _ => Access::Needs(Scope::Read),
    }
}

/// A token bucket: `rate` tokens a second, at most `rate` saved up.
pub struct TokenBucket {
    rate: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    pub fn per_second(rate: u32) -> Self {
        let rate = f64::from(rate.max(1));
        Self {
            rate,
            state: Mutex::new((rate, Instant::now())),
        }
    }

    /// Takes a token, or says how long until one is there.
    pub fn take(&self) -> Result<(), Duration> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = &mut *state;
        let now = Instant::now();
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.rate);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / self.rate))
        }
    }
}

/// Why `node` turns `request` away, if it does.
fn refusal(node: &Node, request: &Request) -> Option<ApiError> {
    let protection = &node.protection;
    let needed = match access(
        request.method(),
        request.uri().path(),
        protection.metrics_auth,
    ) {
        Access::Open => return None,
        Access::Needs(scope) => scope,
    };
    if let Some(auth) = &protection.auth {
        let authorization = request
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        match auth.check(authorization, needed) {
            Ok(()) => {}
            Err(Denied::Unauthenticated(why)) => {
                node.metrics.rejections.count(Rejection::Unauthenticated);
                return Some(ApiError::Unauthorized {
                    message: format!("{why}: send `Authorization: Bearer <token>`"),
                    invalid: authorization.is_some(),
                });
            }
            Err(Denied::Forbidden(scope)) => {
                node.metrics.rejections.count(Rejection::Forbidden);
                return Some(ApiError::Forbidden(format!(
                    "this token lacks the {:?} scope this call needs",
                    scope.as_str()
                )));
            }
        }
    }
    let bucket = protection
        .admin_rate
        .as_ref()
        .filter(|_| needed == Scope::Admin)?;
    let wait = bucket.take().err()?;
    node.metrics.rejections.count(Rejection::RateLimited);
    Some(ApiError::TooManyRequests {
        message: "too many admin calls: retry later (--admin-rate-limit)".into(),
        retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u32,
    })
}

#[derive(Clone)]
pub struct GuardLayer {
    node: Arc<Node>,
}

impl GuardLayer {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

impl<S> Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Guard {
            inner,
            node: self.node.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Guard<S> {
    inner: S,
    node: Arc<Node>,
}

impl<S> Service<Request> for Guard<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Guarded<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        if let Some(refused) = refusal(&self.node, &request) {
            return Guarded::Refused {
                response: Some(refused.into_response()),
            };
        }
        match self.node.protection.request_timeout {
            Some(limit) => Guarded::Bounded {
                inner: tokio::time::timeout(limit, self.inner.call(request)),
                node: self.node.clone(),
                limit,
            },
            None => Guarded::Unbounded {
                inner: self.inner.call(request),
            },
        }
    }
}

pin_project_lite::pin_project! {
    #[project = GuardedProjection]
    pub enum Guarded<F> {
        Refused { response: Option<Response> },
        Bounded {
            #[pin]
            inner: tokio::time::Timeout<F>,
            node: Arc<Node>,
            limit: Duration,
        },
        Unbounded {
            #[pin]
            inner: F,
        },
    }
}

impl<F, E> Future for Guarded<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            GuardedProjection::Refused { response } => {
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
            GuardedProjection::Unbounded { inner } => inner.poll(cx),
            GuardedProjection::Bounded { inner, node, limit } => {
                match std::task::ready!(inner.poll(cx)) {
                    Ok(result) => Poll::Ready(result),
                    Err(_elapsed) => {
                        node.metrics.rejections.count(Rejection::RequestTimeout);
                        let mut response = ApiError::RequestTimeout(format!(
                            "the request did not complete within {limit:?} (--request-timeout); \
                             a write may or may not have been applied"
                        ))
                        .into_response();
                        // Its body may be half read: the connection cannot carry another.
                        response.headers_mut().insert(
                            header::CONNECTION,
                            axum::http::HeaderValue::from_static("close"),
                        );
                        Poll::Ready(Ok(response))
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_need_the_documented_scopes() {
        let cases = [
            (Method::GET, "/health", false, Access::Open),
            (Method::GET, "/ready", false, Access::Open),
            (Method::GET, "/metrics", false, Access::Open),
            (Method::GET, "/metrics", true, Access::Needs(Scope::Read)),
            (Method::GET, "/cache/k", false, Access::Needs(Scope::Read)),
            (Method::HEAD, "/cache/k", false, Access::Needs(Scope::Read)),
            (Method::PUT, "/cache/k", false, Access::Needs(Scope::Write)),
            (Method::POST, "/cache/k", false, Access::Needs(Scope::Write)),
            (
                Method::DELETE,
                "/cache/k",
                false,
                Access::Needs(Scope::Write),
            ),
            (Method::GET, "/stats", false, Access::Needs(Scope::Read)),
            (Method::GET, "/cluster", false, Access::Needs(Scope::Read)),
            (
                Method::POST,
                "/cluster/init",
                false,
                Access::Needs(Scope::Admin),
            ),
            (
                Method::PUT,
                "/cluster/members",
                false,
                Access::Needs(Scope::Admin),
            ),
            (
                Method::POST,
                "/admin/fault",
                false,
                Access::Needs(Scope::Admin),
            ),
            (Method::GET, "/nowhere", false, Access::Needs(Scope::Read)),
            (Method::GET, "/cachet", false, Access::Needs(Scope::Read)),
        ];
        for (method, path, metrics_auth, expected) in cases {
            assert_eq!(
                access(&method, path, metrics_auth),
                expected,
                "{method} {path}"
            );
        }
    }

    #[test]
    fn bucket_allows_a_burst_then_says_how_long_to_wait() {
        let bucket = TokenBucket::per_second(3);
        for _ in 0..3 {
            assert!(bucket.take().is_ok());
        }
        let wait = bucket.take().unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(334),
            "{wait:?}"
        );
    }
}
