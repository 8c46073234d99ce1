//! Replies of the HTTP API: a JSON body, and every refusal as
//! `{"error": code, "message": …}` with a status a client can act on (and
//! `Retry-After` where waiting helps). Shared by the gateway's routes, the
//! dialects' REST endpoints and the admin listener.

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use serde_json::json;
use warp::Reply;
use warp::reply::Response;

use crate::auth::AuthError;

/// A JSON response.
pub fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    let mut response = http::Response::new(Bytes::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response.into_response()
}

/// A refusal: `{"error": code, "message": message}`.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    json_response(status, json!({ "error": code, "message": message }))
}

/// A refused request, rendered by [`ApiError::into_response`].
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// A 401 for a refused token.
    pub fn unauthorized(e: &AuthError) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, e.code(), e.to_string())
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn into_response(self) -> Response {
        let mut response = error_response(self.status, self.code, &self.message);
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED
            && let Ok(value) = HeaderValue::from_str(&format!(
                "Bearer error=\"invalid_token\", error_description=\"{}\"",
                self.code
            ))
        {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }
}
