//! The SDP pre-check an edge runs on a WHIP or WHEP offer before any WebRTC state is
//! built (`edge/src/webrtc/sdp.rs`), on the offer as the HTTP handler has it (UTF-8
//! text, at most `max_sdp_bytes`), and the codec read-back of an answer.
//!
//! Besides "no panic": the checks agree with the sections they parse, a view offer
//! sends only codecs the stream has, an answer names one codec per kind, and what the
//! parser keeps (codec names) is never more than the offer itself: the check is meant
//! to be cheap and allocation-bounded.
#![no_main]

use ferry_edge::webrtc::sdp::{check_publish_offer, check_view_offer, media_sections, negotiated};
use ferry_proto::{Codec, TrackKind};
use libfuzzer_sys::fuzz_target;

/// The edge's default `max_sdp_bytes`.
const MAX_SDP_BYTES: usize = 32 * 1024;

/// Codec sets a stream may have.
const STREAMS: &[&[(TrackKind, Codec)]] = &[
    &[(TrackKind::Video, Codec::Vp8), (TrackKind::Audio, Codec::Opus)],
    &[(TrackKind::Video, Codec::H264)],
    &[(TrackKind::Audio, Codec::Opus)],
    &[(TrackKind::Video, Codec::Av1)],
];

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_SDP_BYTES {
        return;
    }
    let Ok(sdp) = std::str::from_utf8(data) else { return };

    let sections = media_sections(sdp);
    if let Ok(sections) = &sections {
        let kept: usize = sections.iter().flat_map(|m| &m.codecs).map(|(_, name)| name.len() + 1).sum();
        assert!(kept <= sdp.len(), "{kept} bytes of codec names kept from an offer of {}", sdp.len());
    }

    match check_publish_offer(sdp) {
        Ok(checked) => {
            assert_eq!(Ok(&checked), sections.as_ref());
            assert!(checked
                .iter()
                .any(|m| !m.rejected && m.kind != TrackKind::Data && m.supported().next().is_some()));
        }
        Err(e) => assert!(sections.is_err() || e.reason() == "no_supported_codec", "{e}"),
    }

    for stream in STREAMS {
        if let Ok(sendable) = check_view_offer(sdp, stream) {
            assert!(sections.is_ok() && !sendable.is_empty());
            assert!(sendable.iter().all(|codec| stream.iter().any(|(_, c)| c == codec)), "{sendable:?}");
        }
    }

    let answer = negotiated(sdp);
    for (i, (kind, _)) in answer.iter().enumerate() {
        assert!(!answer.iter().skip(i + 1).any(|(k, _)| k == kind), "two codecs for {kind:?}: {answer:?}");
    }
});
