//! What scanned: browser and OS (with versions), device class, and whether it was a bot, from
//! the user agent.
//!
//! Browsers and operating systems are named by uap-core's regexes (the data behind ua-parser
//! in most languages; vendored as `data/uap-core-regexes.json`, its user-agent and OS parsers,
//! Apache-2.0) through the `ua-parser` crate. Matching a few hundred regexes costs tens of
//! microseconds, and a crowd scanning one poster sends few distinct user agents, so results are
//! kept by user agent. Bots are ours to name: crawlers, HTTP libraries, and the link-preview
//! fetchers of chat apps, which open a link as soon as someone pastes it — a preview is
//! nobody looking.

use std::collections::HashMap;

use records::DeviceClass;
use ua_parser::{os, user_agent};

/// The vendored parsers: uap-core's `user_agent_parsers` and `os_parsers` (its device
/// parsers are not used: the device class comes from [`DeviceClass::from_user_agent`]).
const REGEXES: &str = include_str!("../../data/uap-core-regexes.json");

/// In-app browsers uap-core does not name (it sees their web view as Mobile Safari or
/// Chrome), checked first: where codes are scanned from chat and payment apps, the app is the
/// browser people use. Group 1 is the family's marker, group 2 the major version.
const IN_APP: &[(&str, &str)] = &[
    (r"(wxwork)/(\d+)(?:\.(\d+)|)", "WeCom"),
    (r"(MicroMessenger)/(\d+)(?:\.(\d+)|)(?:\.(\d+)|)", "WeChat"),
    (r"(AlipayClient)/(\d+)(?:\.(\d+)|)(?:\.(\d+)|)", "Alipay"),
    (r"(DingTalk)/(\d+)(?:\.(\d+)|)(?:\.(\d+)|)", "DingTalk"),
    (r"\b(QQ)/(\d+)(?:\.(\d+)|)(?:\.(\d+)|)", "QQ"),
];

/// User agents remembered at most; when full, the memory starts again.
const REMEMBERED: usize = 16_384;
/// Longest user agent read; longer ones are cut (real ones are a few hundred bytes).
const MAX_AGENT: usize = 512;

/// Substrings (lower case) that mark a program, not a person: crawlers, link previews,
/// HTTP libraries and headless browsers.
const BOT_MARKS: &[&str] = &[
    "bot",
    "spider",
    "crawl",
    "slurp",
    "preview",
    "facebookexternalhit",
    "facebot",
    "whatsapp",
    "telegram",
    "slack",
    "discord",
    "skypeuripreview",
    "embedly",
    "vkshare",
    "pinterest",
    "headlesschrome",
    "phantomjs",
    "lighthouse",
    "curl/",
    "wget/",
    "python-requests",
    "python-urllib",
    "aiohttp",
    "httpx",
    "go-http-client",
    "java/",
    "okhttp",
    "apache-httpclient",
    "axios/",
    "node-fetch",
    "libwww-perl",
    "postmanruntime",
    "insomnia",
    "httpie",
    "scrapy",
    "monitor",
    "uptime",
    "pingdom",
    "check_http",
];

/// What a user agent says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Agent {
    pub device: DeviceClass,
    pub bot: bool,
    pub browser: Option<String>,
    /// Major version.
    pub browser_version: Option<String>,
    pub os: Option<String>,
    /// `major.minor`, or the major alone.
    pub os_version: Option<String>,
}

/// The parsers, and what they said of the user agents seen lately.
pub struct Agents {
    browsers: user_agent::Extractor<'static>,
    systems: os::Extractor<'static>,
    seen: HashMap<Box<str>, Agent, foldhash::fast::RandomState>,
}

impl std::fmt::Debug for Agents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agents")
            .field("remembered", &self.seen.len())
            .finish_non_exhaustive()
    }
}

/// The vendored regexes did not compile: a broken build, not bad input.
#[derive(Debug, thiserror::Error)]
#[error("the user-agent regexes do not load: {0}")]
pub struct AgentsError(String);

#[derive(serde::Deserialize)]
struct Regexes {
    user_agent_parsers: Vec<user_agent::Parser<'static>>,
    os_parsers: Vec<os::Parser<'static>>,
}

impl Agents {
    /// Compiles the regexes (a few hundred milliseconds: do it once, off any request).
    pub fn load() -> Result<Agents, AgentsError> {
        let regexes: Regexes =
            serde_json::from_str(REGEXES).map_err(|error| AgentsError(error.to_string()))?;
        let in_app = IN_APP.iter().map(|(regex, family)| user_agent::Parser {
            regex: (*regex).into(),
            family_replacement: Some((*family).into()),
            ..Default::default()
        });
        let browsers = in_app
            .chain(regexes.user_agent_parsers)
            .try_fold(user_agent::Builder::new(), |builder, parser| {
                builder.push(parser)
            })
            .map_err(|error| AgentsError(format!("{error:?}")))?
            .build()
            .map_err(|error| AgentsError(format!("{error:?}")))?;
        let systems = regexes
            .os_parsers
            .into_iter()
            .try_fold(os::Builder::new(), |builder, parser| builder.push(parser))
            .map_err(|error| AgentsError(format!("{error:?}")))?
            .build()
            .map_err(|error| AgentsError(format!("{error:?}")))?;
        Ok(Agents {
            browsers,
            systems,
            seen: HashMap::default(),
        })
    }

    /// What `user_agent` says; an absent one says nothing (and is no bot: some privacy tools
    /// strip it).
    pub fn parse(&mut self, user_agent: Option<&str>) -> Agent {
        let Some(user_agent) = user_agent.map(str::trim).filter(|agent| !agent.is_empty()) else {
            return Agent::default();
        };
        let user_agent = crate::cut(user_agent, MAX_AGENT);
        if let Some(agent) = self.seen.get(user_agent) {
            return agent.clone();
        }
        let agent = self.read(user_agent);
        if self.seen.len() >= REMEMBERED {
            self.seen.clear();
        }
        self.seen.insert(user_agent.into(), agent.clone());
        agent
    }

    fn read(&self, user_agent: &str) -> Agent {
        let browser = self.browsers.extract(user_agent);
        let system = self.systems.extract(user_agent);
        let bot = is_bot(user_agent)
            || browser
                .as_ref()
                .is_some_and(|browser| is_bot(&browser.family));
        let device = if bot {
            DeviceClass::Bot
        } else {
            DeviceClass::from_user_agent(Some(user_agent))
        };
        let known = |name: &str| name != "Other" && !name.is_empty();
        Agent {
            device,
            bot,
            browser_version: browser
                .as_ref()
                .filter(|browser| known(&browser.family))
                .and_then(|browser| browser.major)
                .map(str::to_owned),
            browser: browser
                .filter(|browser| known(&browser.family))
                .map(|browser| browser.family.into_owned()),
            os_version: system
                .as_ref()
                .filter(|system| known(&system.os))
                .and_then(|system| {
                    let major = system.major.as_deref()?;
                    Some(match system.minor.as_deref() {
                        Some(minor) => format!("{major}.{minor}"),
                        None => major.to_owned(),
                    })
                }),
            os: system
                .filter(|system| known(&system.os))
                .map(|system| system.os.into_owned()),
        }
    }
}

/// Whether a user agent (or a browser family) names a program rather than a person.
pub fn is_bot(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    BOT_MARKS.iter().any(|mark| lower.contains(mark))
}

#[cfg(test)]
mod tests {
    use super::*;

    const IPHONE_WECHAT: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.44(0x18002c2e) NetType/WIFI Language/zh_CN";
    const IPHONE_SAFARI: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1";
    const PIXEL_CHROME: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.144 Mobile Safari/537.36";
    const WINDOWS_EDGE: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36 Edg/120.0.2210.91";
    const MAC_FIREFOX: &str =
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 14.2; rv:121.0) Gecko/20100101 Firefox/121.0";

    #[test]
    fn phones_and_desktops_are_named_with_versions() {
        let mut agents = Agents::load().expect("the vendored regexes load");
        let wechat = agents.parse(Some(IPHONE_WECHAT));
        assert_eq!(wechat.browser.as_deref(), Some("WeChat"));
        assert_eq!(wechat.browser_version.as_deref(), Some("8"));
        assert_eq!(wechat.os.as_deref(), Some("iOS"));
        assert_eq!(wechat.os_version.as_deref(), Some("17.1"));
        assert_eq!(wechat.device, DeviceClass::Ios);
        assert!(!wechat.bot);
        let safari = agents.parse(Some(IPHONE_SAFARI));
        assert_eq!(safari.browser.as_deref(), Some("Mobile Safari"));
        assert_eq!(safari.browser_version.as_deref(), Some("17"));
        let chrome = agents.parse(Some(PIXEL_CHROME));
        assert_eq!(chrome.browser.as_deref(), Some("Chrome Mobile"));
        assert_eq!(chrome.browser_version.as_deref(), Some("120"));
        assert_eq!(chrome.os.as_deref(), Some("Android"));
        assert_eq!(chrome.os_version.as_deref(), Some("14"));
        assert_eq!(chrome.device, DeviceClass::Android);
        let edge = agents.parse(Some(WINDOWS_EDGE));
        assert_eq!(edge.browser.as_deref(), Some("Edge"));
        assert_eq!(edge.os.as_deref(), Some("Windows"));
        assert_eq!(edge.device, DeviceClass::Desktop);
        let firefox = agents.parse(Some(MAC_FIREFOX));
        assert_eq!(firefox.browser.as_deref(), Some("Firefox"));
        assert_eq!(firefox.os.as_deref(), Some("Mac OS X"));
        // Asked again: the same answer, from memory.
        assert_eq!(agents.parse(Some(IPHONE_WECHAT)), wechat);
        assert_eq!(agents.seen.len(), 5);
        let wecom = agents.parse(Some(
            "Mozilla/5.0 (Linux; Android 13) Chrome/107.0 Mobile Safari/537.36 wxwork/4.1.16 MicroMessenger/7.0.1",
        ));
        assert_eq!(wecom.browser.as_deref(), Some("WeCom"));
        assert_eq!(wecom.browser_version.as_deref(), Some("4"));
        let qq_browser = agents.parse(Some(
            "Mozilla/5.0 (Linux; Android 10) Chrome/89.0 MQQBrowser/13.2 Mobile Safari/537.36",
        ));
        assert_eq!(qq_browser.browser.as_deref(), Some("QQ Browser Mobile"));
    }

    #[test]
    fn link_previews_crawlers_and_libraries_are_bots() {
        let mut agents = Agents::load().expect("loads");
        let bots = [
            "WhatsApp/2.23.20.0 A",
            "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
            "TelegramBot (like TwitterBot)",
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_11_1) AppleWebKit/601.2.4 (KHTML, like Gecko) Version/9.0.1 Safari/601.2.4 facebookexternalhit/1.1 Facebot Twitterbot/1.0",
            "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
            "Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)",
            "Twitterbot/1.0",
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
            "curl/8.5.0",
            "python-requests/2.31.0",
        ];
        for agent in bots {
            let parsed = agents.parse(Some(agent));
            assert!(parsed.bot, "{agent}");
            assert_eq!(parsed.device, DeviceClass::Bot, "{agent}");
        }
        for person in [IPHONE_WECHAT, PIXEL_CHROME, WINDOWS_EDGE, MAC_FIREFOX] {
            assert!(!agents.parse(Some(person)).bot, "{person}");
        }
    }

    #[test]
    fn nothing_or_garbage_says_nothing_and_long_agents_are_cut() {
        let mut agents = Agents::load().expect("loads");
        assert_eq!(agents.parse(None), Agent::default());
        assert_eq!(agents.parse(Some("   ")), Agent::default());
        let garbage = agents.parse(Some("\u{1}\u{2}zzz"));
        assert!(garbage.browser.is_none() && !garbage.bot);
        let long = format!("{IPHONE_SAFARI}{}", "é".repeat(2_000));
        assert_eq!(agents.parse(Some(&long)).os.as_deref(), Some("iOS"));
    }
}
