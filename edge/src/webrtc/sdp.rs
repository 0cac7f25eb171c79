//! Cheap, allocation-bounded checks on SDP before any WebRTC state is built, so bad
//! offers get a precise 400 and negotiated codecs are read back from answers.

use ferry_proto::{Codec, TrackKind};

use super::engine::codec_of_mime;

/// Why an offer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("the offer is not an SDP session description: {0}")]
    Malformed(&'static str),
    #[error("the offer has no media section")]
    NoMedia,
    #[error("no supported codec in the offer (supported: VP8, H264, opus; offered: {offered})")]
    NoSupportedCodec { offered: String },
    #[error("the stream's codecs ({wanted}) are not in the offer (offered: {offered})")]
    CodecMismatch { wanted: String, offered: String },
}

impl SdpError {
    /// A short machine-readable reason.
    pub fn reason(&self) -> &'static str {
        match self {
            SdpError::Malformed(_) => "malformed_sdp",
            SdpError::NoMedia => "no_media",
            SdpError::NoSupportedCodec { .. } => "no_supported_codec",
            SdpError::CodecMismatch { .. } => "codec_mismatch",
        }
    }
}

/// One media section of an SDP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media {
    pub kind: TrackKind,
    /// Port 0: rejected/disabled section.
    pub rejected: bool,
    /// Codec names by payload type, in the order of the `m=` line.
    pub codecs: Vec<(u8, String)>,
}

impl Media {
    /// Codecs Ferry can carry, in preference order.
    pub fn supported(&self) -> impl Iterator<Item = Codec> + '_ {
        self.codecs.iter().filter_map(|(_, name)| codec_by_name(name))
    }
}

fn codec_by_name(name: &str) -> Option<Codec> {
    let mime = match name.to_ascii_lowercase().as_str() {
        "vp8" => "video/VP8",
        "h264" => "video/H264",
        "opus" => "audio/opus",
        _ => return None,
    };
    codec_of_mime(mime)
}

/// Parses the media sections of `sdp`. Lines are scanned once; nothing is kept but
/// the codec names.
pub fn media_sections(sdp: &str) -> Result<Vec<Media>, SdpError> {
    let mut lines = sdp.lines().map(str::trim_end);
    if lines.next() != Some("v=0") {
        return Err(SdpError::Malformed("it must start with v=0"));
    }
    let mut sections: Vec<Media> = Vec::new();
    let mut order: Vec<u8> = Vec::new();
    let mut names: Vec<(u8, String)> = Vec::new();
    let finish = |sections: &mut Vec<Media>, order: &mut Vec<u8>, names: &mut Vec<(u8, String)>| {
        if let Some(last) = sections.last_mut() {
            last.codecs =
                order.iter().filter_map(|pt| names.iter().find(|(p, _)| p == pt).cloned()).collect();
        }
        order.clear();
        names.clear();
    };
    for line in lines {
        if line.is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(SdpError::Malformed("a line is not key=value"));
        };
        if key.len() != 1 {
            return Err(SdpError::Malformed("a line has a key longer than one letter"));
        }
        match key {
            "m" => {
                finish(&mut sections, &mut order, &mut names);
                let mut fields = value.split_ascii_whitespace();
                let kind = match fields.next() {
                    Some("video") => TrackKind::Video,
                    Some("audio") => TrackKind::Audio,
                    Some(_) => TrackKind::Data,
                    None => return Err(SdpError::Malformed("an m= line is empty")),
                };
                let port = fields.next().ok_or(SdpError::Malformed("an m= line has no port"))?;
                let rejected = port == "0";
                let _proto = fields.next().ok_or(SdpError::Malformed("an m= line has no protocol"))?;
                for pt in fields.filter_map(|f| f.parse::<u8>().ok()) {
                    // Each payload type once: a repeat would copy its codec name again.
                    if !order.contains(&pt) {
                        order.push(pt);
                    }
                }
                sections.push(Media { kind, rejected, codecs: Vec::new() });
            }
            "a" if !sections.is_empty() => {
                if let Some(rtpmap) = value.strip_prefix("rtpmap:") {
                    let mut parts = rtpmap.split_ascii_whitespace();
                    let pt = parts.next().and_then(|p| p.parse::<u8>().ok());
                    let name = parts.next().and_then(|n| n.split('/').next());
                    if let (Some(pt), Some(name)) = (pt, name) {
                        names.push((pt, name.to_owned()));
                    }
                }
            }
            _ => {}
        }
    }
    finish(&mut sections, &mut order, &mut names);
    if sections.is_empty() {
        return Err(SdpError::NoMedia);
    }
    Ok(sections)
}

fn offered_names(sections: &[Media]) -> String {
    let mut names: Vec<&str> =
        sections.iter().flat_map(|m| m.codecs.iter().map(|(_, n)| n.as_str())).collect();
    names.sort_unstable();
    names.dedup();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// Checks a WHIP offer: at least one audio or video section with a codec Ferry carries.
pub fn check_publish_offer(sdp: &str) -> Result<Vec<Media>, SdpError> {
    let sections = media_sections(sdp)?;
    let usable =
        sections.iter().any(|m| !m.rejected && m.kind != TrackKind::Data && m.supported().next().is_some());
    if !usable {
        return Err(SdpError::NoSupportedCodec { offered: offered_names(&sections) });
    }
    Ok(sections)
}

/// Checks a WHEP offer against the stream's codecs: each must be offered by some
/// section of its kind. Returns the codecs that will be sent.
pub fn check_view_offer(sdp: &str, stream_codecs: &[(TrackKind, Codec)]) -> Result<Vec<Codec>, SdpError> {
    let sections = media_sections(sdp)?;
    let mut sendable = Vec::new();
    for (kind, codec) in stream_codecs {
        let offered =
            sections.iter().any(|m| !m.rejected && m.kind == *kind && m.supported().any(|c| c == *codec));
        if offered {
            sendable.push(*codec);
        }
    }
    if sendable.is_empty() {
        let wanted: Vec<String> = stream_codecs.iter().map(|(_, c)| format!("{c:?}")).collect();
        return Err(SdpError::CodecMismatch { wanted: wanted.join(", "), offered: offered_names(&sections) });
    }
    Ok(sendable)
}

/// The codec negotiated per kind in an answer: the first supported codec of each
/// accepted section.
pub fn negotiated(answer: &str) -> Vec<(TrackKind, Codec)> {
    let Ok(sections) = media_sections(answer) else { return Vec::new() };
    let mut out: Vec<(TrackKind, Codec)> = Vec::new();
    for m in sections.iter().filter(|m| !m.rejected && m.kind != TrackKind::Data) {
        if let Some(codec) = m.supported().next() {
            if !out.iter().any(|(k, _)| *k == m.kind) {
                out.push((m.kind, codec));
            }
        }
    }
    out
}

/// The answer as the peer must see it behind a 1:1 NAT: host candidates (and `c=`
/// lines) carry `public` instead of the bound address. The session itself keeps the
/// bound address, which is what the NAT delivers to. (The webrtc crate stores its
/// `nat_1to1_ips` setting but never applies it, so Ferry rewrites the answer.)
pub fn advertise_public_ip(sdp: &str, public: std::net::IpAddr) -> String {
    let family = if public.is_ipv4() { "IP4" } else { "IP6" };
    let mut out = String::with_capacity(sdp.len() + 64);
    for line in sdp.split_inclusive('\n') {
        let (text, ending) = match line.strip_suffix("\r\n") {
            Some(t) => (t, "\r\n"),
            None => line.strip_suffix('\n').map_or((line, ""), |t| (t, "\n")),
        };
        if let Some(rest) = text.strip_prefix("a=candidate:") {
            let mut fields: Vec<&str> = rest.split(' ').collect();
            let host = fields.windows(2).any(|w| w == ["typ", "host"]);
            let public = public.to_string();
            if host {
                if let Some(address) = fields.get_mut(4) {
                    *address = &public;
                }
            }
            out.push_str("a=candidate:");
            out.push_str(&fields.join(" "));
        } else if let Some(address) =
            text.strip_prefix("c=IN ").and_then(|r| r.split_once(' ')).map(|(_, a)| a)
        {
            if address == "0.0.0.0" || address == "::" {
                out.push_str(text);
            } else {
                out.push_str(&format!("c=IN {family} {public}"));
            }
        } else {
            out.push_str(text);
        }
        out.push_str(ending);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\na=rtpmap:111 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 98 96 102\r\na=rtpmap:98 VP9/90000\r\na=rtpmap:96 VP8/90000\r\n\
        a=rtpmap:102 H264/90000\r\n";

    #[test]
    fn media_sections_keep_m_line_order() {
        let sections = media_sections(OFFER).unwrap();
        assert_eq!(sections.len(), 2);
        assert_eq!(sections[0].kind, TrackKind::Audio);
        assert_eq!(sections[1].supported().collect::<Vec<_>>(), vec![Codec::Vp8, Codec::H264]);
    }

    #[test]
    fn bad_offers_have_reasons() {
        assert_eq!(media_sections("hello").unwrap_err().reason(), "malformed_sdp");
        assert_eq!(media_sections("v=0\r\nnot a line\r\n").unwrap_err().reason(), "malformed_sdp");
        assert_eq!(media_sections("v=0\r\ns=-\r\n").unwrap_err(), SdpError::NoMedia);
        let pcmu_only = "v=0\r\nm=audio 9 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";
        let err = check_publish_offer(pcmu_only).unwrap_err();
        assert_eq!(err.reason(), "no_supported_codec");
        assert!(err.to_string().contains("PCMU"), "{err}");
    }

    #[test]
    fn view_offers_must_carry_the_stream_codecs() {
        let stream = [(TrackKind::Video, Codec::Vp8), (TrackKind::Audio, Codec::Opus)];
        assert_eq!(check_view_offer(OFFER, &stream).unwrap(), vec![Codec::Vp8, Codec::Opus]);
        let av1 = [(TrackKind::Video, Codec::Av1)];
        assert_eq!(check_view_offer(OFFER, &av1).unwrap_err().reason(), "codec_mismatch");
    }

    #[test]
    fn host_candidates_advertise_the_public_ip() {
        let answer = "v=0\r\nc=IN IP4 10.0.0.5\r\na=candidate:1 1 udp 2130706431 10.0.0.5 50000 typ host\r\n\
            a=candidate:2 1 udp 1694498815 198.51.100.1 50000 typ srflx raddr 10.0.0.5 rport 50000\r\n";
        let public: std::net::IpAddr = "203.0.113.7".parse().unwrap();
        let out = advertise_public_ip(answer, public);
        assert_eq!(
            out,
            "v=0\r\nc=IN IP4 203.0.113.7\r\na=candidate:1 1 udp 2130706431 203.0.113.7 50000 typ host\r\n\
             a=candidate:2 1 udp 1694498815 198.51.100.1 50000 typ srflx raddr 10.0.0.5 rport 50000\r\n"
        );
    }

    #[test]
    fn a_repeated_payload_type_keeps_its_codec_once() {
        // Found by fuzz/fuzz_targets/sdp.rs: every repeat on the m= line copied the codec
        // name, so an offer of max_sdp_bytes (32 KiB) could make the edge hold 128 MiB.
        let offer = format!(
            "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF {}\r\na=rtpmap:96 {}/90000\r\n",
            "96 ".repeat(1000),
            "V".repeat(1000)
        );
        let codecs = &media_sections(&offer).unwrap()[0].codecs;
        assert_eq!(codecs.len(), 1, "one codec, kept {} times", codecs.len());
        assert_eq!(codecs[0], (96, "V".repeat(1000)));
        let twice = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96 96 97\r\n\
            a=rtpmap:96 VP8/90000\r\na=rtpmap:97 H264/90000\r\n";
        assert_eq!(
            media_sections(twice).unwrap()[0].supported().collect::<Vec<_>>(),
            vec![Codec::Vp8, Codec::H264]
        );
    }

    #[test]
    fn answers_name_one_codec_per_kind() {
        let answer = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n\
            m=video 0 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n";
        assert_eq!(negotiated(answer), vec![(TrackKind::Audio, Codec::Opus)]);
    }
}
