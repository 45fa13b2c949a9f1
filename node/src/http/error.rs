//! The one error type of the HTTP API: every failure becomes `{"error": "..."}` with the
//! status that says whose fault it is.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use dcache_protocol::wire::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// No valid API token; `invalid` when one was given but is not known.
    #[error("{message}")]
    Unauthorized { message: String, invalid: bool },
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    RequestTimeout(String),
    #[error("{message}")]
    TooManyRequests {
        message: String,
        retry_after_secs: u32,
    },
    /// Not applied, and nothing of it pending: retrying is safe.
    #[error("{message}")]
    Unavailable {
        message: String,
        retry_after_secs: u32,
    },
    /// A write that was handed to Raft (or to the partition's leader) and got no answer:
    /// it may still be applied, even after a newer write (etcd's "outcome unknown").
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::OutcomeUnknown(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let retry_after = match &self {
            Self::Unavailable {
                retry_after_secs, ..
            }
            | Self::TooManyRequests {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            _ => None,
        };
        // RFC 6750: say which scheme to use, and whether the token given was the fault.
        let challenge = match &self {
            Self::Unauthorized { invalid: true, .. } => Some(HeaderValue::from_static(
                r#"Bearer realm="dcache", error="invalid_token""#,
            )),
            Self::Unauthorized { invalid: false, .. } => {
                Some(HeaderValue::from_static(r#"Bearer realm="dcache""#))
            }
            Self::Forbidden(_) => Some(HeaderValue::from_static(
                r#"Bearer realm="dcache", error="insufficient_scope""#,
            )),
            _ => None,
        };
        let body = ErrorBody {
            error: self.to_string(),
        };
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(challenge) = challenge {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, challenge);
        }
        response
    }
}
