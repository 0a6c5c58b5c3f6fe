//! `Guarded`: a response body that holds a guard until the body ends or is dropped — how the
//! metrics and load-shedding layers count a streamed response for as long as it streams.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use http_body::Frame;

/// `inner`, with `guard` dropped when the body is.
pub(crate) struct Guarded<G> {
    inner: Body,
    _guard: G,
}

impl<G: Send + Unpin + 'static> Guarded<G> {
    /// Wraps any body.
    pub fn wrap<B>(inner: B, guard: G) -> Body
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        Body::new(Self {
            inner: Body::new(inner),
            _guard: guard,
        })
    }
}

impl<G: Unpin> http_body::Body for Guarded<G> {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
