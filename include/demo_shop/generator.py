"""Demo store generator: a seeded, realistic multi-market shop in the canonical store schema.

Why: every later stage (extraction, lifecycle segments, cart recovery, CLV models) needs a shop
whose data looks like a real one, with the same traps, at sizes from 1k to 1M customers, and in
the three databases the project supports. Everything is vectorized numpy driven by one
``np.random.default_rng(seed)``, so the same (customers, seed, as_of) gives bitwise-equal frames.

Behaviour model, in short:
- customers spread over seven markets, registrations growing over ~two years before ``as_of``;
- purchases follow a BG/NBD-like latent process: a Gamma-distributed purchase rate per customer
  (with a VIP tail) and a Beta-distributed chance of dropping out after each purchase;
- order and registration times follow a local-time daily curve in the customer's zone;
- every order has its converted cart; open carts exist at all ages, from guests, prospects and
  customers, some empty, and some whose items the customer later bought through another cart.

Internally times are int64 UTC epoch seconds and money is int64 minor units (cents, or yen for
JPY), so order totals are exact; frames carry aware UTC timestamps and float money.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
import unicodedata
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import sqlalchemy as sa

from remarketing.markets import load_markets
from remarketing.store.schema import CANONICAL_TABLES, TableSpec, metadata

DAY = 86_400
HOUR = 3_600
TABLE_ORDER = ("customers", "products", "carts", "cart_items", "orders", "order_items")

# Market mix and per-market behaviour. Order of MARKETS fixes every array index below.
MARKETS = ("DE", "FR", "GB", "US", "JP", "CN", "BR")
MARKET_SHARE = np.array([0.18, 0.12, 0.14, 0.30, 0.10, 0.07, 0.09])
CONSENT_RATE = np.array([0.58, 0.62, 0.66, 0.74, 0.55, 0.60, 0.70])
# Cross-border customers served by a market: (market, country, share of market, locale, zone).
CROSS_BORDER = (
    ("DE", "AT", 0.07, "de-AT", "Europe/Vienna"),
    ("DE", "CH", 0.04, "de-CH", "Europe/Zurich"),
    ("FR", "BE", 0.06, "fr-BE", "Europe/Brussels"),
    ("GB", "IE", 0.03, "en-GB", "Europe/Dublin"),
)
# Population weights (millions) for the regions of markets with region_time_zones.
REGION_WEIGHTS = {
    "US": {"NY": 19.6, "MA": 7.0, "FL": 22.6, "GA": 11.0, "IL": 12.5, "TX": 30.5, "MN": 5.7, "CO": 5.9,
           "UT": 3.4, "AZ": 7.4, "CA": 39.0, "WA": 7.8, "OR": 4.2, "AK": 0.7, "HI": 1.4},
    "BR": {"SP": 46.0, "RJ": 17.4, "MG": 20.5, "PR": 11.4, "RS": 10.9, "BA": 14.1, "AM": 3.9, "MT": 3.7,
           "AC": 0.8, "PE": 9.1},
}  # fmt: skip
REGION_KNOWN = 0.88  # share of US/BR customers with a state on file
ZONE_KNOWN = 0.70  # share of customers with a time zone on file
ZONE_DIFFERENT = 0.03  # of those, a valid zone other than where they live (moved, travelling)
ES_US_SHARE = 0.12
URUMQI_SHARE = 0.03

FX = {"EUR": 1.0, "GBP": 0.86, "USD": 1.09, "JPY": 163.0, "CNY": 7.85, "BRL": 5.95}
DECIMALS = {"EUR": 2, "GBP": 2, "USD": 2, "JPY": 0, "CNY": 2, "BRL": 2}
CURRENCIES = tuple(FX)

# Local-time share of activity per hour of day (orders and registrations).
HOUR_CURVE = np.array(
    [1.0, 0.6, 0.35, 0.25, 0.2, 0.3, 0.7, 1.5, 2.5, 3.3, 3.8, 4.2,
     4.8, 4.6, 4.2, 4.0, 4.1, 4.5, 5.0, 5.8, 6.5, 6.4, 5.0, 2.6]
)  # fmt: skip
EMAIL_DOMAINS = ("example.com", "example.net", "example.org", "mail.example.com", "post.example.net",
                 "inbox.example.org")  # fmt: skip
EMAIL_DOMAIN_SHARE = np.array([0.3, 0.2, 0.15, 0.15, 0.1, 0.1])
ORDER_STATUSES = ("placed", "shipped", "delivered", "cancelled", "refunded")
COUPONS = (("WELCOME10", 10), ("SAVE15", 15), ("SUMMER20", 20), ("BLACKFRIDAY25", 25), ("VIP10", 10),
           ("COMEBACK15", 15))  # fmt: skip

# Name pools per language; "display|romanized" where the display form is not Latin script.
NAMES = {
    "de": ("Anna Lena Marie Sophie Laura Julia Lea Hannah Katharina Sabine Jonas Lukas Felix Maximilian "
           "Paul Leon Tobias Stefan Michael Thomas Jürgen Jörg Björn Günther",
           "Müller Schmidt Schneider Fischer Weber Meyer Wagner Becker Schulz Hoffmann Schäfer Koch Bauer "
           "Richter Klein Wolf Schröder Neumann Schwarz Zimmermann Krüger Hartmann Lange Köhler"),
    "fr": ("Camille Léa Manon Chloé Inès Sarah Emma Julie Élodie Margaux Lucas Hugo Louis Théo Nathan "
           "Mathis Antoine Julien Nicolas François Étienne Baptiste",
           "Martin Bernard Dubois Thomas Robert Richard Petit Durand Leroy Moreau Simon Laurent Lefèvre "
           "Michel Garcia David Bertrand Roux Vincent Fournier Girard Lefebvre Mercier Faure"),
    "en_gb": ("Oliver George Harry Jack Jacob Charlie Thomas James William Olivia Amelia Isla Ava Emily "
              "Sophie Grace Lily Freya Charlotte Eleanor Siobhan Aoife",
              "Smith Jones Williams Taylor Brown Davies Evans Wilson Thomas Johnson Roberts Robinson "
              "Thompson Wright Walker White Edwards Hughes Green Hall O'Brien Murphy"),
    "en_us": ("James Michael Robert John David William Richard Joseph Christopher Daniel Mary Patricia "
              "Jennifer Linda Elizabeth Jessica Sarah Emily Ashley Madison Tyler Brittany",
              "Smith Johnson Williams Brown Jones Miller Davis Wilson Anderson Taylor Thomas Moore Jackson "
              "Martin Lee Thompson White Harris Clark Lewis Nguyen Kim Patel Chen"),
    "es": ("José Luis Carlos Juan Jorge Miguel Alejandro Diego María Guadalupe Sofía Valentina Camila "
           "Lucía Ximena Daniela Andrea Gabriela",
           "García Rodríguez Martínez Hernández López González Pérez Sánchez Ramírez Torres Flores Rivera "
           "Gómez Díaz Cruz Morales Reyes Ortiz"),
    "pt": ("Miguel Arthur Gael Heitor Théo Davi Gabriel Bernardo Samuel João Helena Alice Laura Maria "
           "Valentina Heloísa Júlia Beatriz Larissa Luana",
           "Silva Santos Oliveira Souza Rodrigues Ferreira Alves Pereira Lima Gomes Costa Ribeiro Martins "
           "Carvalho Almeida Lopes Soares Fernandes Araújo Barbosa"),
    "ja": ("陽翔|haruto 蓮|ren 湊|minato 大翔|hiroto 悠真|yuma 樹|itsuki 颯太|sota 健太|kenta 翔太|shota "
           "拓也|takuya 陽葵|himari 凛|rin 結菜|yuna 葵|aoi 美咲|misaki さくら|sakura 花子|hanako 愛|ai "
           "優子|yuko 真由美|mayumi",
           "佐藤|sato 鈴木|suzuki 高橋|takahashi 田中|tanaka 伊藤|ito 渡辺|watanabe 山本|yamamoto "
           "中村|nakamura 小林|kobayashi 加藤|kato 吉田|yoshida 山田|yamada 佐々木|sasaki 山口|yamaguchi "
           "松本|matsumoto 井上|inoue 木村|kimura 林|hayashi 清水|shimizu 斎藤|saito"),
    "zh": ("伟|wei 芳|fang 娜|na 秀英|xiuying 敏|min 静|jing 丽|li 强|qiang 磊|lei 军|jun 洋|yang 勇|yong "
           "艳|yan 杰|jie 娟|juan 涛|tao 明|ming 超|chao 秀兰|xiulan 霞|xia 子涵|zihan 浩然|haoran "
           "欣怡|xinyi 宇轩|yuxuan",
           "王|wang 李|li 张|zhang 刘|liu 陈|chen 杨|yang 黄|huang 赵|zhao 吴|wu 周|zhou 徐|xu 孙|sun 马|ma "
           "朱|zhu 胡|hu 郭|guo 何|he 高|gao 林|lin 罗|luo"),
}  # fmt: skip
LOCALE_POOL = {"de": "de", "fr": "fr", "en-GB": "en_gb", "en-US": "en_us", "es": "es", "pt": "pt", "ja": "ja",
               "zh": "zh"}  # fmt: skip

# Product catalogue: category -> (EUR price range, share of catalogue, variant kind, nouns).
# Each noun is "en|de|fr|es|pt|ja|zh".
NAME_LANGS = ("en", "de", "fr", "es", "pt", "ja", "zh")
CATEGORIES = {
    "apparel": ((19, 129), 0.16, "color", (
        "Linen Shirt|Leinenhemd|Chemise en lin|Camisa de lino|Camisa de linho|リネンシャツ|亚麻衬衫",
        "Hoodie|Kapuzenpullover|Sweat à capuche|Sudadera con capucha|Moletom com capuz|パーカー|连帽卫衣",
        "Wool Sweater|Wollpullover|Pull en laine|Jersey de lana|Suéter de lã|ウールセーター|羊毛衫",
        "Denim Jacket|Jeansjacke|Veste en jean|Chaqueta vaquera|Jaqueta jeans|デニムジャケット|牛仔夹克",
        "Summer Dress|Sommerkleid|Robe d'été|Vestido de verano|Vestido de verão|サマードレス|夏季连衣裙")),
    "shoes": ((39, 189), 0.11, "color", (
        "Running Shoes|Laufschuhe|Chaussures de course|Zapatillas para correr|Tênis de corrida|ランニングシューズ|跑鞋",
        "Leather Boots|Lederstiefel|Bottes en cuir|Botas de cuero|Botas de couro|レザーブーツ|皮靴",
        "Sneakers|Sneaker|Baskets|Zapatillas|Tênis casual|スニーカー|运动鞋",
        "Sandals|Sandalen|Sandales|Sandalias|Sandálias|サンダル|凉鞋",
        "Loafers|Slipper|Mocassins|Mocasines|Mocassins|ローファー|乐福鞋")),
    "accessories": ((9, 99), 0.10, "color", (
        "Leather Belt|Ledergürtel|Ceinture en cuir|Cinturón de cuero|Cinto de couro|レザーベルト|皮带",
        "Tote Bag|Tragetasche|Sac cabas|Bolso tote|Bolsa tote|トートバッグ|托特包",
        "Sunglasses|Sonnenbrille|Lunettes de soleil|Gafas de sol|Óculos de sol|サングラス|太阳镜",
        "Wool Scarf|Wollschal|Écharpe en laine|Bufanda de lana|Cachecol de lã|ウールマフラー|羊毛围巾",
        "Wallet|Geldbörse|Portefeuille|Cartera|Carteira|財布|钱包")),
    "home": ((7, 149), 0.12, "color", (
        "Ceramic Mug|Keramiktasse|Tasse en céramique|Taza de cerámica|Caneca de cerâmica|陶器マグカップ|陶瓷马克杯",
        "Throw Blanket|Kuscheldecke|Plaid|Manta|Manta|ブランケット|毛毯",
        "Scented Candle|Duftkerze|Bougie parfumée|Vela aromática|Vela aromática|アロマキャンドル|香薰蜡烛",
        "Cushion Cover|Kissenbezug|Housse de coussin|Funda de cojín|Capa de almofada|クッションカバー|抱枕套",
        "Table Lamp|Tischlampe|Lampe de table|Lámpara de mesa|Luminária de mesa|テーブルランプ|台灯")),
    "beauty": ((5, 79), 0.10, "scent", (
        "Face Cream|Gesichtscreme|Crème visage|Crema facial|Creme facial|フェイスクリーム|面霜",
        "Lip Balm|Lippenbalsam|Baume à lèvres|Bálsamo labial|Protetor labial|リップバーム|润唇膏",
        "Shampoo|Shampoo|Shampooing|Champú|Xampu|シャンプー|洗发水",
        "Eau de Parfum|Eau de Parfum|Eau de parfum|Eau de parfum|Eau de parfum|オードパルファム|香水",
        "Hand Cream|Handcreme|Crème mains|Crema de manos|Creme para as mãos|ハンドクリーム|护手霜")),
    "electronics": ((19, 399), 0.09, "color", (
        "Wireless Earbuds|Kabellose Ohrhörer|Écouteurs sans fil|Auriculares inalámbricos|Fones sem fio|ワイヤレスイヤホン|无线耳机",
        "Bluetooth Speaker|Bluetooth-Lautsprecher|Enceinte Bluetooth|Altavoz Bluetooth|Caixa de som Bluetooth|Bluetoothスピーカー|蓝牙音箱",
        "Smartwatch|Smartwatch|Montre connectée|Reloj inteligente|Relógio inteligente|スマートウォッチ|智能手表",
        "Power Bank|Powerbank|Batterie externe|Batería externa|Carregador portátil|モバイルバッテリー|充电宝",
        "USB-C Charger|USB-C-Ladegerät|Chargeur USB-C|Cargador USB-C|Carregador USB-C|USB-C充電器|USB-C充电器")),
    "sports": ((9, 249), 0.09, "color", (
        "Yoga Mat|Yogamatte|Tapis de yoga|Esterilla de yoga|Tapete de ioga|ヨガマット|瑜伽垫",
        "Water Bottle|Trinkflasche|Gourde|Botella de agua|Garrafa de água|ウォーターボトル|运动水壶",
        "Dumbbell Set|Hantelset|Set d'haltères|Juego de mancuernas|Kit de halteres|ダンベルセット|哑铃套装",
        "Cycling Gloves|Fahrradhandschuhe|Gants de vélo|Guantes de ciclismo|Luvas de ciclismo|サイクリンググローブ|骑行手套",
        "Tennis Racket|Tennisschläger|Raquette de tennis|Raqueta de tenis|Raquete de tênis|テニスラケット|网球拍")),
    "toys": ((7, 89), 0.08, "color", (
        "Building Blocks|Bausteine|Jeu de construction|Bloques de construcción|Blocos de montar|ブロック玩具|积木",
        "Plush Bear|Plüschbär|Ours en peluche|Oso de peluche|Urso de pelúcia|くまのぬいぐるみ|毛绒熊",
        "Puzzle|Puzzle|Puzzle|Rompecabezas|Quebra-cabeça|パズル|拼图",
        "Wooden Train|Holzeisenbahn|Train en bois|Tren de madera|Trem de madeira|木製の電車|木制火车",
        "Board Game|Brettspiel|Jeu de société|Juego de mesa|Jogo de tabuleiro|ボードゲーム|桌游")),
    "books": ((6, 45), 0.07, "format", (
        "Cookbook|Kochbuch|Livre de cuisine|Libro de cocina|Livro de receitas|料理本|菜谱",
        "Notebook|Notizbuch|Carnet|Cuaderno|Caderno|ノート|笔记本",
        "Travel Guide|Reiseführer|Guide de voyage|Guía de viaje|Guia de viagem|旅行ガイド|旅行指南",
        "Novel|Roman|Roman|Novela|Romance|小説|小说",
        "Picture Book|Bilderbuch|Livre illustré|Libro ilustrado|Livro ilustrado|絵本|绘本")),
    "garden": ((5, 159), 0.08, "color", (
        "Garden Hose|Gartenschlauch|Tuyau d'arrosage|Manguera de jardín|Mangueira de jardim|ガーデンホース|花园水管",
        "Plant Pot|Blumentopf|Pot de fleurs|Maceta|Vaso de plantas|植木鉢|花盆",
        "Pruning Shears|Gartenschere|Sécateur|Tijeras de podar|Tesoura de poda|剪定ばさみ|修枝剪",
        "Bird Feeder|Vogelhaus|Mangeoire à oiseaux|Comedero para pájaros|Comedouro para pássaros|バードフィーダー|喂鸟器",
        "Solar Lantern|Solarlaterne|Lanterne solaire|Farol solar|Lanterna solar|ソーラーランタン|太阳能灯笼")),
}  # fmt: skip
VARIANTS = {
    "color": (
        "Navy|Marineblau|bleu marine|azul marino|azul-marinho|ネイビー|藏青色",
        "Black|Schwarz|noir|negro|preto|ブラック|黑色",
        "White|Weiß|blanc|blanco|branco|ホワイト|白色",
        "Olive|Olivgrün|vert olive|verde oliva|verde-oliva|オリーブ|橄榄绿",
        "Burgundy|Bordeaux|bordeaux|burdeos|bordô|ボルドー|酒红色",
        "Sand|Sand|sable|arena|areia|サンド|沙色",
        "Grey|Grau|gris|gris|cinza|グレー|灰色",
        "Terracotta|Terrakotta|terracotta|terracota|terracota|テラコッタ|陶土色",
    ),
    "scent": (
        "Lavender|Lavendel|lavande|lavanda|lavanda|ラベンダー|薰衣草",
        "Citrus|Zitrus|agrumes|cítricos|cítrico|シトラス|柑橘",
        "Rose|Rose|rose|rosa|rosa|ローズ|玫瑰",
        "Unscented|Parfümfrei|sans parfum|sin perfume|sem perfume|無香料|无香",
    ),
    "format": (
        "Hardcover|Gebunden|relié|tapa dura|capa dura|ハードカバー|精装",
        "Paperback|Taschenbuch|broché|tapa blanda|brochura|ペーパーバック|平装",
        "Gift Edition|Geschenkausgabe|édition cadeau|edición regalo|edição de presente|ギフト版|礼品版",
    ),
}
COLLECTIONS = ("Aurora", "Nordic", "Atlas", "Lumen", "Sora", "Terra", "Mistral", "Kaito", "Selva", "Bloom",
               "Urban", "Vista")  # fmt: skip


# --------------------------------------------------------------------------------------------
# helpers


def _romanize(text: str) -> str:
    """ASCII handle for an email address from a Latin-script name."""
    text = text.replace("ä", "ae").replace("ö", "oe").replace("ü", "ue").replace("ß", "ss")
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return "".join(ch for ch in text.lower() if ch.isalpha())


def _pool(spec: str) -> tuple[list[str], list[str]]:
    display, roman = [], []
    for item in spec.split():
        shown, _, romanized = item.partition("|")
        display.append(shown)
        roman.append(romanized or _romanize(shown))
    return display, roman


def _default_as_of() -> datetime:
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


def _epoch(as_of: datetime) -> int:
    if as_of.tzinfo is None:
        raise ValueError("as_of must be timezone-aware (UTC)")
    return int(as_of.timestamp())


def _ts(seconds: np.ndarray) -> pd.DatetimeIndex:
    """Epoch seconds -> aware UTC timestamps with microsecond unit (what the databases return)."""
    return pd.DatetimeIndex(np.asarray(seconds, dtype=np.int64).astype("datetime64[s]")).as_unit("us").tz_localize(UTC)


def _code(labels: list[str], value: str) -> int:
    """Index of ``value`` in ``labels``, appending it first if new (string columns are built as codes)."""
    if value not in labels:
        labels.append(value)
    return labels.index(value)


_STR = pd.StringDtype("pyarrow", na_value=np.nan)  # pandas' default ``str`` dtype


def _arrow(labels, codes: np.ndarray, missing: np.ndarray | None = None) -> pa.Array:
    """Decode integer codes into an Arrow string array (nulls where ``missing``); fast at 1M rows."""
    return pa.array(list(labels), pa.string()).take(pa.array(codes, mask=missing))


def _str(values) -> pd.api.extensions.ExtensionArray:
    return pd.array(values, dtype=_STR)


def _labels(labels, codes: np.ndarray, missing: np.ndarray | None = None) -> pd.api.extensions.ExtensionArray:
    return _str(_arrow(labels, codes, missing))


def _sort_by(major: np.ndarray, minor: np.ndarray) -> np.ndarray:
    """Stable argsort by (major, minor) via one int64 key: faster than lexsort at millions of rows."""
    major = major - major.min() if len(major) else major
    minor = minor - minor.min() if len(minor) else minor
    span = int(minor.max()) + 1 if len(minor) else 1
    if len(major) and int(major.max()) * span >= 2**62:
        return np.lexsort((minor, major))
    return np.argsort(major * span + minor, kind="stable")


def _money(minor: np.ndarray, decimals: np.ndarray) -> np.ndarray:
    return minor / np.power(10.0, decimals)


def _log_uniform(rng: np.random.Generator, low: float, high: float, size: int) -> np.ndarray:
    return np.exp(rng.uniform(np.log(low), np.log(high), size))


def _pick(rng: np.random.Generator, weights: np.ndarray, size: int) -> np.ndarray:
    cdf = np.cumsum(weights / weights.sum())
    return np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), len(weights) - 1)


def _group_starts(group: np.ndarray) -> np.ndarray:
    """Boolean mask of the first row of each run in a sorted group array."""
    first = np.ones(len(group), dtype=bool)
    first[1:] = group[1:] != group[:-1]
    return first


class _Zones:
    """Zone names, and local <-> UTC conversion for many instants grouped by zone."""

    def __init__(self, names: list[str], as_of: int):
        self.names = names
        self.index = {name: i for i, name in enumerate(names)}
        at = datetime.fromtimestamp(as_of, UTC)
        # Standard offset is only used to pick the local calendar day; exact conversion follows.
        self.offset = np.array([int(at.astimezone(ZoneInfo(z)).utcoffset().total_seconds()) for z in names])

    def local_to_utc(self, local: np.ndarray, zone: np.ndarray) -> np.ndarray:
        out = np.empty(len(local), dtype=np.int64)
        if not len(local):
            return out
        order = np.argsort(zone, kind="stable")
        bounds = np.flatnonzero(_group_starts(zone[order]))
        for start, end in zip(bounds, [*bounds[1:], len(order)], strict=True):
            rows = order[start:end]
            naive = pd.DatetimeIndex(local[rows].astype("datetime64[s]"))
            aware = naive.tz_localize(
                self.names[zone[rows[0]]], ambiguous=np.zeros(len(rows), dtype=bool), nonexistent="shift_forward"
            )
            out[rows] = aware.as_unit("s").asi8
        return out

    def at_local_hour(self, rng: np.random.Generator, utc: np.ndarray, zone: np.ndarray) -> np.ndarray:
        """Keep each instant's local calendar day, redraw its time of day from HOUR_CURVE."""
        day = np.floor_divide(utc + self.offset[zone], DAY)
        local = day * DAY + _pick(rng, HOUR_CURVE, len(utc)) * HOUR + rng.integers(0, HOUR, len(utc))
        return self.local_to_utc(local, zone)


# --------------------------------------------------------------------------------------------
# products


def _products(rng: np.random.Generator, count: int, as_of: int) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Catalogue sorted by category; returns the frame, EUR price in cents and category index."""
    names = list(CATEGORIES)
    shares = np.array([CATEGORIES[c][1] for c in names])
    cat = np.sort(_pick(rng, shares, count))
    low = np.array([CATEGORIES[c][0][0] for c in names])[cat]
    high = np.array([CATEGORIES[c][0][1] for c in names])[cat]
    euros = np.exp(rng.uniform(np.log(low), np.log(high)))
    price_cents = np.floor(euros).astype(np.int64) * 100 + 99  # charm pricing: 24.99
    noun = rng.integers(0, 5, count)
    variant = rng.integers(0, 8, count)
    collection = rng.integers(0, len(COLLECTIONS), count)
    product_id = np.arange(1, count + 1, dtype=np.int64)
    skus, texts = [], []
    for i in range(count):
        category = names[cat[i]]
        _, _, kind, nouns = CATEGORIES[category]
        choices = VARIANTS[kind]
        noun_parts = nouns[noun[i]].split("|")
        var_parts = choices[variant[i] % len(choices)].split("|")
        prefix = COLLECTIONS[collection[i]]
        localized = {}
        for lang, n, v in zip(NAME_LANGS, noun_parts, var_parts, strict=True):
            localized[lang] = f"{prefix} {n}（{v}）" if lang in ("ja", "zh") else f"{prefix} {n} – {v}"
        skus.append(f"{category[:3].upper()}-{product_id[i]:06d}")
        texts.append(json.dumps(localized, ensure_ascii=False, sort_keys=True))
    sku = np.array(skus, dtype=object)
    frame = pd.DataFrame(
        {
            "product_id": product_id,
            "sku": sku,
            "category": np.array(names, dtype=object)[cat],
            "names": np.array(texts, dtype=object),
            "price": price_cents / 100.0,
            "currency": "EUR",
            "image_url": "https://cdn.shop.example.com/img/" + sku + ".jpg",
            "product_url": "https://shop.example.com/p/" + sku,
            "active": rng.random(count) < 0.94,
            "updated_at": _ts(as_of - (_log_uniform(rng, 1, 500, count) * DAY).astype(np.int64)),
        }
    )
    return frame, price_cents, cat


def _local_prices(price_cents: np.ndarray) -> np.ndarray:
    """[product, currency] price in minor units: charm .99 prices, JPY to whole 10 yen."""
    out = np.empty((len(price_cents), len(CURRENCIES)), dtype=np.int64)
    for j, cur in enumerate(CURRENCIES):
        if cur == "EUR":
            out[:, j] = price_cents
        elif DECIMALS[cur] == 0:
            out[:, j] = np.maximum(10, np.round(price_cents * FX[cur] / 1000.0).astype(np.int64) * 10)
        else:
            out[:, j] = np.floor(price_cents * FX[cur] / 100.0).astype(np.int64) * 100 + 99
    return out


# --------------------------------------------------------------------------------------------
# main generator


def generate_store(customers: int, seed: int = 7, as_of: datetime | None = None) -> dict[str, pd.DataFrame]:
    """Generate the six canonical tables for ``customers`` customers; deterministic per arguments."""
    if customers < 1:
        raise ValueError("customers must be >= 1")
    cfg = load_markets()
    now = _epoch(as_of or _default_as_of())
    rng = np.random.default_rng(seed)
    n = int(customers)

    # ---- zones: every zone a customer may live in or report
    zone_names: list[str] = []
    for code in MARKETS:
        for z in [cfg[code].default_time_zone, *cfg[code].time_zones, *cfg[code].region_time_zones.values()]:
            _code(zone_names, z)
    for *_, z in CROSS_BORDER:
        _code(zone_names, z)
    zones = _Zones(zone_names, now)
    market_currency = np.array([CURRENCIES.index(cfg[c].currency) for c in MARKETS])
    market_zone = np.array([zones.index[cfg[c].default_time_zone] for c in MARKETS])
    decimals_of = np.array([DECIMALS[c] for c in CURRENCIES])

    # ---- customers: market, country, locale, region, zone (string columns as codes into label lists)
    market = _pick(rng, MARKET_SHARE, n)
    countries = list(MARKETS)
    locales = [cfg[c].primary_locale for c in MARKETS]
    country = market.copy()
    locale = market.copy()
    home_zone = market_zone[market]
    u = rng.random(n)
    for m, code in enumerate(MARKETS):
        lower = 0.0
        for mk, ctry, share, loc, z in CROSS_BORDER:
            if mk != code:
                continue
            sel = (market == m) & (u >= lower) & (u < lower + share)
            country[sel], locale[sel] = _code(countries, ctry), _code(locales, loc)
            home_zone[sel] = zones.index[z]
            lower += share
    us = market == MARKETS.index("US")
    locale[us & (rng.random(n) < ES_US_SHARE)] = _code(locales, "es-US")
    cn = market == MARKETS.index("CN")
    home_zone[cn & (rng.random(n) < URUMQI_SHARE)] = zones.index["Asia/Urumqi"]
    regions: list[str] = []
    region = np.zeros(n, dtype=np.int64)
    region_known = np.zeros(n, dtype=bool)
    known_draw = rng.random(n) < REGION_KNOWN
    for code, weights in REGION_WEIGHTS.items():
        in_market = market == MARKETS.index(code)
        keys = list(weights)
        pick = _pick(rng, np.array([weights[k] for k in keys]), n)
        region_zone = np.array([zones.index[cfg[code].region_time_zones[k]] for k in keys])
        # Everyone in these markets lives somewhere; only some have the state on file.
        home_zone[in_market] = region_zone[pick[in_market]]
        codes = np.array([_code(regions, k) for k in keys])
        has = in_market & known_draw
        region[has] = codes[pick[has]]
        region_known |= has
    zone_known = rng.random(n) < ZONE_KNOWN
    reported_zone = home_zone.copy()
    different = zone_known & (rng.random(n) < ZONE_DIFFERENT)
    for m, code in enumerate(MARKETS):
        options = np.array([zones.index[z] for z in cfg[code].time_zones])
        sel = different & (market == m)
        reported_zone[sel] = options[rng.integers(0, len(options), sel.sum())]

    # ---- names and emails: one global pool table, offsets per language
    pool_keys = list(NAMES)
    first_display, first_roman, last_display, last_roman = [], [], [], []
    f_off, f_len, l_off, l_len = [], [], [], []
    for key in pool_keys:
        fd, fr = _pool(NAMES[key][0])
        ld, lr = _pool(NAMES[key][1])
        f_off.append(len(first_display))
        f_len.append(len(fd))
        l_off.append(len(last_display))
        l_len.append(len(ld))
        first_display += fd
        first_roman += fr
        last_display += ld
        last_roman += lr
    locale_pool = np.array(
        [pool_keys.index(LOCALE_POOL.get(loc, LOCALE_POOL.get(loc.split("-")[0], "en_us"))) for loc in locales]
    )
    lang = locale_pool[locale]
    first_idx = np.array(f_off)[lang] + (rng.random(n) * np.array(f_len)[lang]).astype(np.int64)
    last_idx = np.array(l_off)[lang] + (rng.random(n) * np.array(l_len)[lang]).astype(np.int64)
    customer_id = np.arange(1, n + 1, dtype=np.int64)
    style = rng.integers(0, 4, n)  # first.last, flast, first_last, first
    initials = [r[0] for r in first_roman]
    email = pc.binary_join_element_wise(
        _arrow(first_roman + initials, np.where(style == 1, first_idx + len(first_roman), first_idx)),
        _arrow([".", "", "_", ""], style),
        _arrow([*last_roman, ""], np.where(style == 3, len(last_roman), last_idx)),
        pa.array(customer_id).cast(pa.string()),
        _arrow(["@" + d for d in EMAIL_DOMAINS], _pick(rng, EMAIL_DOMAIN_SHARE, n)),
        "",
    )

    # ---- registration: ~2 years with growth, plus a burst of very recent sign-ups
    window = 730 * DAY
    growth = np.log(4.0) / window
    x = np.log1p(rng.random(n) * np.expm1(growth * window)) / growth
    reg = (now - window + x).astype(np.int64)
    recent = rng.random(n) < 0.04
    reg[recent] = now - rng.integers(0, 14 * DAY, recent.sum())
    reg = zones.at_local_hour(rng, reg, home_zone)
    reg = np.where(reg > now - 60, reg - DAY, reg)
    consent = rng.random(n) < CONSENT_RATE[market]
    profile_updated = rng.random(n) < 0.35
    cust_updated = np.where(profile_updated, reg + (rng.random(n) * (now - reg)).astype(np.int64), reg)

    # ---- purchases: BG/NBD-like latent process simulated by rounds
    buyer = rng.random(n) < 0.65
    vip = rng.random(n) < 0.04
    rate = rng.gamma(1.2, 1.0 / (1.2 * 50.0), n)  # purchases per day, mean one per ~50 days
    rate[vip] *= 5.0
    dropout = rng.beta(1.4, 3.6, n)  # chance of churning after each purchase
    dropout[vip] *= 0.25
    same_session = rng.random(n) < 0.55  # registered at first checkout
    first_delay = np.where(
        same_session, rng.integers(120, 45 * 60, n), (rng.exponential(30.0, n) * DAY).astype(np.int64)
    )
    first_at = reg + first_delay
    cust_ids: list[np.ndarray] = []
    times: list[np.ndarray] = []
    active = np.flatnonzero(buyer & (first_at < now))
    t = first_at[active].astype(np.float64)
    while active.size and len(cust_ids) < 400:
        cust_ids.append(active)
        times.append(t)
        alive = rng.random(active.size) >= dropout[active]
        active, t = active[alive], t[alive]
        t = t + rng.exponential(1.0, active.size) / rate[active] * DAY
        keep = t < now
        active, t = active[keep], t[keep]
    o_cust = np.concatenate([np.empty(0, dtype=np.int64), *cust_ids])
    o_time = np.concatenate([np.empty(0), *times]).astype(np.int64)
    o_first = np.zeros(len(o_cust), dtype=bool)
    o_first[: len(cust_ids[0]) if cust_ids else 0] = True
    redraw = ~(o_first & same_session[o_cust])
    o_time[redraw] = zones.at_local_hour(rng, o_time[redraw], home_zone[o_cust[redraw]])
    o_time = np.maximum(o_time, reg[o_cust] + 120)
    keep = o_time <= now - 60
    o_cust, o_time, o_first = o_cust[keep], o_time[keep], o_first[keep]
    order_sort = _sort_by(o_time, o_cust)  # order ids follow placement time
    o_cust, o_time, o_first = o_cust[order_sort], o_time[order_sort], o_first[order_sort]
    n_orders = len(o_cust)
    order_id = np.arange(1, n_orders + 1, dtype=np.int64)
    o_cur = market_currency[market[o_cust]]

    # ---- products and order lines
    n_products = max(200, min(5000, n // 200))
    products, price_cents, prod_cat = _products(rng, n_products, now)
    local_price = _local_prices(price_cents)
    cat_start = np.searchsorted(prod_cat, np.arange(len(CATEGORIES)))
    cat_count = np.bincount(prod_cat, minlength=len(CATEGORIES))
    popularity = 1.0 / np.power(rng.permutation(n_products) + 1.0, 0.8)
    favourite = _pick(rng, np.array([c[1] for c in CATEGORIES.values()]), n)

    def draw_products(owner: np.ndarray, size: int) -> np.ndarray:
        """Mix of the owner's favourite category (uniform within it) and best-sellers."""
        product = _pick(rng, popularity, size)
        fav = (owner >= 0) & (rng.random(size) < 0.55)
        cats = favourite[owner[fav]]
        product[fav] = cat_start[cats] + (rng.random(fav.sum()) * cat_count[cats]).astype(np.int64)
        return product

    def distinct_lines(group: np.ndarray, product: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One line per product per group (a shop merges repeated adds), in random line order."""
        order = _sort_by(group, product)
        group, product = group[order], product[order]
        unique = np.ones(len(group), dtype=bool)
        unique[1:] = (group[1:] != group[:-1]) | (product[1:] != product[:-1])
        group, product = group[unique], product[unique]
        order = _sort_by(group, rng.permutation(len(group)))
        return group[order], product[order]

    def draw_quantity(size: int) -> np.ndarray:
        return 1 + _pick(rng, np.array([0.85, 0.11, 0.04]), size)

    lines_per_order = 1 + _pick(rng, np.array([0.30, 0.30, 0.20, 0.12, 0.08]), n_orders)
    l_order = np.repeat(np.arange(n_orders), lines_per_order)
    l_order, l_product = distinct_lines(l_order, draw_products(o_cust[l_order], len(l_order)))
    l_qty = draw_quantity(len(l_order))
    l_unit = local_price[l_product, o_cur[l_order]]
    l_total = l_qty * l_unit
    subtotal = np.bincount(l_order, weights=l_total, minlength=n_orders).astype(np.int64)

    # ---- discounts: price-sensitive customers use coupons more often; exact allocation to lines
    sensitivity = rng.beta(2.0, 6.0, n)
    discounted = rng.random(n_orders) < np.clip(0.8 * sensitivity[o_cust], 0, 0.9)
    coupon = rng.integers(1, len(COUPONS), n_orders)
    coupon[o_first & (rng.random(n_orders) < 0.5)] = 0  # WELCOME10 on first orders
    pct = np.array([c[1] for c in COUPONS])[coupon]
    o_discount = np.where(discounted, (subtotal * pct + 50) // 100, 0)
    l_discount = l_total * o_discount[l_order] // np.maximum(subtotal[l_order], 1)
    remainder = o_discount - np.bincount(l_order, weights=l_discount, minlength=n_orders).astype(np.int64)
    first_line = _group_starts(l_order)
    l_discount[first_line] += remainder[l_order[first_line]]
    o_total = subtotal - o_discount

    # ---- order status and updates
    age = now - o_time
    status_pick = rng.random(n_orders)
    status = np.where(age < DAY, 0, np.where(age < 5 * DAY, 1, 2))  # codes into ORDER_STATUSES
    o_updated = np.where(age < 5 * DAY, o_time + (rng.random(n_orders) * age).astype(np.int64), o_time)
    o_updated[age < DAY] = o_time[age < DAY]
    delivered = status == 2
    o_updated[delivered] = o_time[delivered] + rng.integers(2 * DAY, 6 * DAY, delivered.sum())
    cancelled = status_pick < 0.03
    status[cancelled] = 3
    o_updated[cancelled] = o_time[cancelled] + rng.integers(600, DAY, cancelled.sum())
    refunded = (status_pick >= 0.03) & (status_pick < 0.05) & (age > 8 * DAY)
    status[refunded] = 4
    o_updated[refunded] = o_time[refunded] + rng.integers(7 * DAY, 30 * DAY, refunded.sum())
    o_updated = np.clip(o_updated, o_time, now)

    # ---- converted carts: one per order, items equal to the order's lines
    session = _log_uniform(rng, 120, 4 * HOUR, n_orders).astype(np.int64)
    cc_updated = o_time - rng.integers(1, 31, n_orders)
    cc_created = cc_updated - session

    # ---- open carts: recent (hourly recovery has work), older ones, and the "bought elsewhere" trap
    n_recent = max(60, round(0.04 * n))
    n_old = round(0.22 * n)
    tenth = n_recent // 10
    band = np.repeat([0, 1, 2], [tenth, n_recent - 2 * tenth, tenth])  # <1 h, 1-72 h, 72-96 h idle
    low = np.array([60, HOUR, 72 * HOUR])[band]
    high = np.array([HOUR, 72 * HOUR, 96 * HOUR])[band]
    idle = np.concatenate([rng.integers(low, high), (_log_uniform(rng, 4, 700, n_old) * DAY).astype(np.int64)])
    n_free = len(idle)
    f_updated = now - idle
    resumed = rng.random(n_free) < 0.1
    f_created = f_updated - np.where(
        resumed, rng.integers(DAY, 20 * DAY, n_free), _log_uniform(rng, 60, 3 * HOUR, n_free).astype(np.int64)
    )
    f_owner = rng.integers(0, n, n_free)
    f_guest = (rng.random(n_free) < 0.30) | (reg[f_owner] > f_created)
    f_owner[f_guest] = -1
    f_market = np.where(f_guest, _pick(rng, MARKET_SHARE, n_free), market[np.maximum(f_owner, 0)])
    guest_email = f_guest & (rng.random(n_free) < 0.7)

    is_trap = (rng.random(n_orders) < np.where(now - o_time < 72 * HOUR, 0.35, 0.03)) & (status != 3)
    trap_orders = np.flatnonzero(is_trap)
    t_created = cc_created[trap_orders] - rng.integers(2 * HOUR, 72 * HOUR, len(trap_orders))
    t_updated = t_created + rng.integers(60, 40 * 60, len(trap_orders))

    # Carts in build order [converted..., free open..., trap open...]; ids follow creation time.
    c_created = np.concatenate([cc_created, f_created, t_created])
    c_updated = np.concatenate([cc_updated, f_updated, t_updated])
    c_owner = np.concatenate([o_cust, f_owner, o_cust[trap_orders]])
    c_market = np.concatenate([market[o_cust], f_market, market[o_cust[trap_orders]]])
    c_order = np.concatenate([order_id, np.zeros(n_free + len(trap_orders), dtype=np.int64)])
    n_carts = len(c_created)
    cart_sort = _sort_by(c_created, np.arange(n_carts))
    cart_id_of = np.empty(n_carts, dtype=np.int64)
    cart_id_of[cart_sort] = np.arange(1, n_carts + 1)
    c_currency = market_currency[c_market]

    guest_handles = sorted({h for first, _ in NAMES.values() for h in _pool(first)[1]})
    c_guest_email = np.zeros(n_carts, dtype=bool)
    c_guest_email[n_orders : n_orders + n_free] = guest_email
    c_email = pc.binary_join_element_wise(
        _arrow([h + ".guest" for h in guest_handles], rng.integers(0, len(guest_handles), n_carts), ~c_guest_email),
        pa.array(cart_id_of).cast(pa.string()),
        _arrow(["@" + d for d in EMAIL_DOMAINS], _pick(rng, EMAIL_DOMAIN_SHARE, n_carts)),
        "",
    )

    # Cart items: converted (= order lines), free (0-4 random items), trap (= that order's lines).
    free_items = np.where(rng.random(n_free) < 0.08, 0, 1 + _pick(rng, np.array([0.5, 0.28, 0.14, 0.08]), n_free))
    fi_cart = np.repeat(np.arange(n_free), free_items)
    fi_cart, fi_product = distinct_lines(fi_cart, draw_products(f_owner[fi_cart], len(fi_cart)))
    fi_qty = draw_quantity(len(fi_cart))
    fi_cur = market_currency[f_market[fi_cart]]
    fi_unit = local_price[fi_product, fi_cur]
    repriced = (rng.random(len(fi_cart)) < 0.10) & (idle[fi_cart] > 30 * DAY)  # price changed since
    factor = rng.uniform(0.85, 1.15, repriced.sum())
    fi_unit[repriced] = np.where(
        decimals_of[fi_cur[repriced]] == 0,
        np.round(fi_unit[repriced] * factor / 10).astype(np.int64) * 10,
        np.floor(fi_unit[repriced] * factor / 100).astype(np.int64) * 100 + 99,
    )
    trap_line = is_trap[l_order]
    trap_pos = (np.cumsum(is_trap) - 1)[l_order[trap_line]]

    i_cart = np.concatenate([l_order, n_orders + fi_cart, n_orders + n_free + trap_pos])
    i_product = np.concatenate([l_product, fi_product, l_product[trap_line]])
    i_qty = np.concatenate([l_qty, fi_qty, l_qty[trap_line]])
    i_unit = np.concatenate([l_unit, fi_unit, l_unit[trap_line]])
    i_u = rng.random(len(i_cart))
    i_sort = _sort_by(cart_id_of[i_cart], (i_u * (1 << 30)).astype(np.int64))
    i_cart, i_product, i_qty, i_unit, i_u = (a[i_sort] for a in (i_cart, i_product, i_qty, i_unit, i_u))
    i_start, i_end = c_created[i_cart], c_updated[i_cart]
    i_added = i_start + (i_u * (i_end - i_start)).astype(np.int64)
    starts = _group_starts(i_cart)
    i_added[starts] = i_start[starts]  # the first add creates the cart
    i_updated = np.where(rng.random(len(i_cart)) < 0.1, i_end, i_added)  # some quantities changed later

    # ---- frames
    frames: dict[str, pd.DataFrame] = {}
    frames["customers"] = pd.DataFrame(
        {
            "customer_id": customer_id,
            "email": _str(email),
            "first_name": _labels(first_display, first_idx),
            "last_name": _labels(last_display, last_idx),
            "locale": _labels(locales, locale),
            "country": _labels(countries, country),
            "region": _labels(regions, region, ~region_known),
            "market": _labels(MARKETS, market),
            "time_zone": _labels(zone_names, reported_zone, ~zone_known),
            "marketing_consent": consent,
            "registered_at": _ts(reg),
            "updated_at": _ts(np.maximum(cust_updated, reg)),
        }
    )
    frames["products"] = products
    p = cart_sort  # carts in id order
    frames["carts"] = pd.DataFrame(
        {
            "cart_id": cart_id_of[p],
            "customer_id": pd.arrays.IntegerArray(np.maximum(c_owner[p], 0) + 1, c_owner[p] < 0),
            "email": _str(c_email.take(pa.array(p))),
            "market": _labels(MARKETS, c_market[p]),
            "currency": _labels(CURRENCIES, c_currency[p]),
            "status": _labels(("open", "ordered"), (c_order[p] > 0).astype(np.int64)),
            "order_id": pd.arrays.IntegerArray(c_order[p], c_order[p] == 0),
            "created_at": _ts(c_created[p]),
            "updated_at": _ts(c_updated[p]),
        }
    )
    i_cur = c_currency[i_cart]
    frames["cart_items"] = pd.DataFrame(
        {
            "cart_item_id": np.arange(1, len(i_cart) + 1, dtype=np.int64),
            "cart_id": cart_id_of[i_cart],
            "product_id": i_product + 1,
            "quantity": i_qty.astype(np.int64),
            "unit_price": _money(i_unit, decimals_of[i_cur]),
            "currency": _labels(CURRENCIES, i_cur),
            "added_at": _ts(i_added),
            "updated_at": _ts(i_updated),
        }
    )
    o_dec = decimals_of[o_cur]
    frames["orders"] = pd.DataFrame(
        {
            "order_id": order_id,
            "customer_id": o_cust + 1,
            "market": _labels(MARKETS, market[o_cust]),
            "currency": _labels(CURRENCIES, o_cur),
            "status": _labels(ORDER_STATUSES, status),
            "total_amount": _money(o_total, o_dec),
            "discount_amount": _money(o_discount, o_dec),
            "coupon_code": _labels([c[0] for c in COUPONS], coupon, ~discounted),
            "placed_at": _ts(o_time),
            "updated_at": _ts(o_updated),
        }
    )
    l_dec = o_dec[l_order]
    frames["order_items"] = pd.DataFrame(
        {
            "order_item_id": np.arange(1, len(l_order) + 1, dtype=np.int64),
            "order_id": order_id[l_order],
            "product_id": l_product + 1,
            "quantity": l_qty.astype(np.int64),
            "unit_price": _money(l_unit, l_dec),
            "discount_amount": _money(l_discount, l_dec),
            "updated_at": _ts(o_time[l_order]),
        }
    )
    orders = frames["orders"]
    orders["email"] = pd.Series(None, index=orders.index, dtype=object)  # the demo's guests have no orders
    orders["country"] = pd.Series(None, index=orders.index, dtype=object)  # the market column says it
    orders["original_order_id"] = pd.array([pd.NA] * len(orders), dtype="Int64")
    return {name: frames[name][CANONICAL_TABLES[name].column_names] for name in TABLE_ORDER}


def store_summary(frames: dict[str, pd.DataFrame]) -> dict:
    """Row counts and a few shape figures, with no personal data (safe to print)."""
    orders = frames["orders"]
    customers = frames["customers"]
    carts = frames["carts"]
    buyers = orders["customer_id"].nunique()
    return {
        "rows": {name: len(frame) for name, frame in frames.items()},
        "markets": customers["market"].value_counts().sort_index().to_dict(),
        "buyers": int(buyers),
        "orders_per_buyer": round(len(orders) / buyers, 2) if buyers else 0.0,
        "lines_per_order": round(len(frames["order_items"]) / len(orders), 2) if len(orders) else 0.0,
        "open_carts": int((carts["status"] == "open").sum()),
    }


# --------------------------------------------------------------------------------------------
# writing


def _timestamp_text(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """UTC 'YYYY-MM-DD HH:MM:SS.ffffff' as fixed-width bytes, built digit by digit (fast at 10M rows).

    This is SQLAlchemy's SQLite DateTime storage format and a MariaDB DATETIME(6) literal.
    """
    values = series.dt.tz_convert(UTC).dt.tz_localize(None).to_numpy("datetime64[us]")
    missing = np.isnat(values)
    values = np.where(missing, np.datetime64(0, "us"), values)
    days = values.astype("datetime64[D]")
    months = days.astype("datetime64[M]")
    years = months.astype("datetime64[Y]")
    fields = [
        (0, 4, years.astype(np.int64) + 1970),
        (5, 2, (months - years.astype("datetime64[M]")).astype(np.int64) + 1),
        (8, 2, (days - months.astype("datetime64[D]")).astype(np.int64) + 1),
    ]
    micros = (values - days.astype("datetime64[us]")).astype(np.int64)
    fields += [(11, 2, micros // 3_600_000_000), (14, 2, micros // 60_000_000 % 60), (17, 2, micros // 1_000_000 % 60)]
    fields.append((20, 6, micros % 1_000_000))
    out = np.empty((len(values), 26), dtype=np.uint8)
    for column, char in ((4, "-"), (7, "-"), (10, " "), (13, ":"), (16, ":"), (19, ".")):
        out[:, column] = ord(char)
    for start, width, value in fields:
        for k in range(width):
            out[:, start + width - 1 - k] = 48 + value // 10**k % 10
    return out.view("S26").ravel(), missing


def _db_frame(frame: pd.DataFrame, spec: TableSpec) -> pd.DataFrame:
    """Money rounded to cents, so DECIMAL(12, 2) never rounds silently."""
    frame = frame[spec.column_names]
    money = [c for c, kind in spec.columns.items() if kind == "float"]
    if money:
        frame = frame.assign(**{c: frame[c].round(2) for c in money})
    return frame


def _sqlite_rows(frame: pd.DataFrame, spec: TableSpec) -> list[tuple]:
    """DB-API rows: None for NULL, 0/1 booleans, naive-UTC timestamp text."""
    columns = []
    for name, kind in spec.columns.items():
        series = frame[name]
        missing = series.isna().to_numpy()
        if kind == "timestamp":
            text, missing = _timestamp_text(series)
            out = text.astype("U26").astype(object)
        elif kind == "bool":
            out = np.where(series.fillna(False).to_numpy(dtype=bool), 1, 0).astype(object)
        elif kind == "int":
            out = series.fillna(0).to_numpy(dtype=np.int64).astype(object)
        elif kind == "float":
            out = series.to_numpy(dtype=np.float64, na_value=np.nan).astype(object)
        else:
            out = series.to_numpy(dtype=object, na_value=None).copy()
        out[missing] = None
        columns.append(out.tolist())
    return list(zip(*columns, strict=True))


def _mysql_literals(frame: pd.DataFrame, spec: TableSpec) -> pa.Array:
    """One SQL tuple literal per row, e.g. (1,'a',NULL,'2026-01-01 00:00:00.000000'), built in Arrow."""
    parts: list[pa.Array] = []
    for name, kind in spec.columns.items():
        series = frame[name]
        missing = pa.array(series.isna().to_numpy())
        if kind == "timestamp":
            text, _ = _timestamp_text(series)
            literal = pc.binary_join_element_wise("'", pa.array(text).cast(pa.string()), "'", "")
        elif kind == "bool":
            literal = pa.array(np.where(series.fillna(False).to_numpy(dtype=bool), "1", "0"))
        elif kind in ("int", "float"):
            literal = pa.array(series.to_numpy(dtype=np.float64 if kind == "float" else np.int64, na_value=0))
            literal = literal.cast(pa.string())
        else:
            text = pa.array(series.to_numpy(dtype=object, na_value=""), pa.string())
            for char, escaped in (("\\", "\\\\"), ("'", "\\'"), ("\0", "\\0")):
                text = pc.replace_substring(text, char, escaped)
            literal = pc.binary_join_element_wise("'", text, "'", "")
        parts.append(pc.if_else(missing, pa.scalar("NULL"), literal))
    rows = pc.binary_join_element_wise(*parts, ",")
    return pc.binary_join_element_wise("(", rows, ")", "")


def _load_postgres(cursor, name: str, frame: pd.DataFrame, spec: TableSpec) -> None:
    """COPY FROM STDIN of Arrow-written CSV: nulls unquoted-empty, timestamps '...Z' (UTC)."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    buffer = io.BytesIO()
    pa_csv.write_csv(table, buffer, pa_csv.WriteOptions(include_header=False, quoting_style="needed"))
    buffer.seek(0)
    cursor.copy_expert(f"COPY {name} ({', '.join(spec.column_names)}) FROM STDIN WITH (FORMAT csv)", buffer)


def _load_mysql(cursor, name: str, frame: pd.DataFrame, spec: TableSpec, max_bytes: int = 4 << 20) -> None:
    """Multi-row INSERT statements of at most ``max_bytes`` (below MariaDB's max_allowed_packet)."""
    rows = _mysql_literals(frame, spec)
    lengths = np.cumsum(pc.binary_length(rows).to_numpy(zero_copy_only=False) + 1)
    head = f"INSERT INTO {name} ({', '.join(spec.column_names)}) VALUES "
    start = 0
    while start < len(rows):
        budget = (lengths[start - 1] if start else 0) + max_bytes
        end = max(start + 1, int(np.searchsorted(lengths, budget, side="right")))
        values = pc.binary_join(pa.ListArray.from_arrays([0, end - start], rows.slice(start, end - start)), ",")
        cursor.execute(head + values[0].as_py())
        start = end


def write_store(frames: dict[str, pd.DataFrame], url: str, *, chunk_rows: int = 50_000) -> dict[str, int]:
    """(Re)create the canonical tables at ``url`` and bulk load the frames; returns rows per table.

    Indexes are created after the load (faster than maintaining them row by row). Timestamps land
    as the same UTC instants everywhere: timestamptz on PostgreSQL, naive UTC on MariaDB and SQLite.
    """
    engine = sa.create_engine(url)
    dialect = engine.dialect.name
    tables = [metadata.tables[name] for name in TABLE_ORDER]
    try:
        with engine.begin() as conn:
            metadata.drop_all(conn, tables=tables)
            for table in tables:
                conn.execute(sa.schema.CreateTable(table))
        counts: dict[str, int] = {}
        raw = engine.raw_connection()
        try:
            cursor = raw.cursor()
            if dialect == "sqlite":
                cursor.execute("PRAGMA synchronous=OFF")
            for name in TABLE_ORDER:
                spec = CANONICAL_TABLES[name]
                frame = _db_frame(frames[name], spec)
                for start in range(0, len(frame), chunk_rows):
                    chunk = frame.iloc[start : start + chunk_rows]
                    if dialect == "postgresql":
                        _load_postgres(cursor, name, chunk, spec)
                    elif dialect == "sqlite":
                        marks = ", ".join("?" * len(spec.columns))
                        sql = f"INSERT INTO {name} ({', '.join(spec.column_names)}) VALUES ({marks})"
                        cursor.executemany(sql, _sqlite_rows(chunk, spec))
                    else:
                        _load_mysql(cursor, name, chunk, spec)
                counts[name] = len(frame)
            raw.commit()
            cursor.close()
        finally:
            raw.close()
        with engine.begin() as conn:
            for table in tables:
                for index in table.indexes:
                    index.create(conn)
    finally:
        engine.dispose()
    return counts


# --------------------------------------------------------------------------------------------
# CLI


def _parse_as_of(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate the demo store and write it to a database.")
    parser.add_argument("--customers", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--url", required=True, help="SQLAlchemy URL, e.g. sqlite:///data/store.db")
    parser.add_argument("--as-of", type=_parse_as_of, default=None, help="the shop's now, ISO 8601 (UTC)")
    args = parser.parse_args(argv)
    as_of = args.as_of or _default_as_of()
    started = time.perf_counter()
    frames = generate_store(args.customers, seed=args.seed, as_of=as_of)
    generated = time.perf_counter() - started
    counts = write_store(frames, args.url)
    print(f"as_of {as_of.isoformat()}  generated in {generated:.1f}s, written in "
          f"{time.perf_counter() - started - generated:.1f}s")  # fmt: skip
    for name, rows in counts.items():
        print(f"{name:12s} {rows:>10d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
