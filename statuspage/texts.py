"""Every word the status page shows, in Bahasa Indonesia (default) and English, and times in WIB.

Incident texts follow the disaster-SOP order customers need: acknowledge, say what still works and
what happens to their payment, then update until it is over.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from orchestrator.domain.clock import WIB
from statuspage.model import INTAKE, ComponentStatus

LANGS = ("id", "en")

STATUS_LABELS: dict[str, tuple[str, str]] = {
    ComponentStatus.OPERATIONAL: ("Normal", "Operational"),
    ComponentStatus.DEGRADED: ("Melambat", "Degraded performance"),
    ComponentStatus.PARTIAL_OUTAGE: ("Gangguan sebagian", "Partial outage"),
    ComponentStatus.MAJOR_OUTAGE: ("Gangguan besar", "Major outage"),
    ComponentStatus.MAINTENANCE: ("Pemeliharaan", "Under maintenance"),
}
INCIDENT_STATUS_LABELS: dict[str, tuple[str, str]] = {
    "investigating": ("Sedang diselidiki", "Investigating"),
    "identified": ("Penyebab diketahui", "Identified"),
    "monitoring": ("Dipantau", "Monitoring"),
    "resolved": ("Selesai", "Resolved"),
    "scheduled": ("Terjadwal", "Scheduled"),
    "in_progress": ("Sedang berlangsung", "In progress"),
    "completed": ("Selesai", "Completed"),
}
ORDER_STATE_TEXTS: dict[str, tuple[str, str, str, str]] = {
    # state: (label id, next step id, label en, next step en)
    "captured": ("Pesanan diterima", "Instruksi pembayaran sedang disiapkan.",
                 "Order received", "Payment instructions are being prepared."),
    "awaiting_payment": ("Menunggu pembayaran",
                         "Selesaikan pembayaran sesuai instruksi sebelum batas waktu.",
                         "Awaiting payment",
                         "Complete the payment as instructed before the deadline."),
    "payment_failed": ("Pembayaran belum berhasil",
                       "Pembayaran melalui metode ini tidak berhasil. Kembali ke toko untuk "
                       "mencoba lagi sebelum batas waktu.",
                       "Payment did not go through",
                       "The payment with this method did not go through. Go back to the shop "
                       "to try again before the deadline."),
    "verifying": ("Pembayaran sedang diverifikasi",
                  "Jika Anda sudah membayar, pembayaran Anda tercatat dan sedang dikonfirmasi "
                  "ke penyedia pembayaran. Tidak perlu membayar lagi.",
                  "Verifying payment",
                  "If you have paid, your payment is safe and is being confirmed with the "
                  "payment provider now. Do not pay again."),
    "paid": ("Lunas", "Pembayaran Anda sudah dikonfirmasi. Penjual akan memproses pesanan.",
             "Paid", "Your payment is confirmed. The seller will process your order."),
    "expired": ("Kedaluwarsa", "Batas waktu pembayaran terlewati tanpa pembayaran. Silakan "
                "buat pesanan baru di toko.", "Expired",
                "The payment deadline passed without a payment. Please place a new order."),
    "cancelled": ("Dibatalkan", "Pesanan ini dibatalkan.", "Cancelled",
                  "This order was cancelled."),
    "needs_review": ("Sedang ditinjau petugas",
                     "Petugas kami sedang memeriksa pembayaran ini dan akan menghubungi Anda. "
                     "Jangan membayar ulang.", "Under review",
                     "Our staff are checking this payment and will contact you. Do not pay "
                     "again."),
    "refunded": ("Dikembalikan", "Dana Anda sudah dikembalikan.", "Refunded",
                 "Your money has been refunded."),
}

VERIFYING_NEXT_STEP: dict[str, tuple[str, str]] = {
    # waiting_on: (next step id, next step en), instead of the provider being read now
    "provider": ("Jika Anda sudah membayar, pembayaran Anda tercatat dan akan dikonfirmasi "
                 "otomatis begitu penyedia pembayaran pulih. Tidak perlu membayar lagi.",
                 "If you have paid, your payment is safe and will be confirmed automatically "
                 "as soon as the payment provider recovers. Do not pay again."),
    "bank_feed": ("Jika Anda sudah membayar, pembayaran Anda tercatat dan akan dikonfirmasi "
                  "otomatis begitu transfer Anda terbaca di mutasi rekening bank. Tidak perlu "
                  "membayar lagi.",
                  "If you have paid, your payment is safe and will be confirmed automatically "
                  "as soon as your transfer shows in the bank's records. Do not pay again."),
}

UI: dict[str, tuple[str, str]] = {
    "title": ("Status layanan pembayaran", "Payment service status"),
    "components": ("Komponen", "Components"),
    "uptime_90": ("Ketersediaan 90 hari terakhir", "Uptime over the last 90 days"),
    "no_data": ("Belum ada data", "No data"),
    "incidents": ("Gangguan yang sedang berlangsung", "Current incidents"),
    "no_incidents": ("Tidak ada gangguan saat ini.", "No incidents right now."),
    "maintenance": ("Pemeliharaan terjadwal", "Scheduled maintenance"),
    "history": ("Riwayat gangguan", "Incident history"),
    "no_history": ("Belum ada riwayat gangguan.", "No incidents recorded."),
    "lookup": ("Cek status pesanan Anda", "Check your order"),
    "lookup_help": ("Masukkan kode pesanan dan email atau nomor HP yang Anda pakai saat "
                    "checkout.", "Enter your order code and the email or phone number you used "
                    "at checkout."),
    "order_code": ("Kode pesanan", "Order code"),
    "contact": ("Email atau nomor HP", "Email or phone number"),
    "check": ("Cek", "Check"),
    "not_found": ("Pesanan tidak ditemukan. Periksa kembali kode pesanan dan email atau nomor "
                  "HP Anda.", "Order not found. Check the order code and your email or phone "
                  "number."),
    "rate_limited": ("Terlalu banyak percobaan. Coba lagi dalam {seconds} detik.",
                     "Too many attempts. Try again in {seconds} seconds."),
    "state": ("Status", "State"),
    "next": ("Langkah berikutnya", "What happens next"),
    "next_check": ("Pengecekan berikutnya", "Next check"),
    "amount": ("Jumlah", "Amount"),
    "transfer_amount": ("Jumlah transfer (tepat, termasuk kode unik)",
                        "Amount to transfer (exactly, unique code included)"),
    "deadline": ("Batas pembayaran", "Pay before"),
    "paid_at": ("Dibayar pada", "Paid at"),
    "updated": ("Diperbarui", "Updated"),
    "feeds": ("Langganan: Atom · RSS · JSON", "Subscribe: Atom · RSS · JSON"),
    "language": ("English", "Bahasa Indonesia"),
    "since": ("sejak", "since"),
    "stale": ("Data status mungkin tertunda: database tidak terjangkau.",
              "Status may be out of date: the database is unreachable."),
    "back": ("Kembali ke status layanan", "Back to service status"),
    "affected": ("Terdampak", "Affected"),
    "bad_input": ("Isi kode pesanan dan email atau nomor HP.",
                  "Fill in the order code and an email or phone number."),
}


def t(key: str, lang: str) -> str:
    pair = UI[key]
    return pair[1] if lang == "en" else pair[0]


def pick(pair: tuple[str, str], lang: str) -> str:
    return pair[1] if lang == "en" else pair[0]


MONTHS_ID = ("Jan", "Feb", "Mar", "Apr", "Mei", "Jun", "Jul", "Agu", "Sep", "Okt", "Nov", "Des")
MONTHS_EN = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def wib(at: datetime, lang: str = "id") -> str:
    """"28 Nov 2026 22:15 WIB": customers read their own clock, not UTC."""
    local = at.astimezone(WIB)
    month = (MONTHS_EN if lang == "en" else MONTHS_ID)[local.month - 1]
    return f"{local.day} {month} {local.year} {local:%H:%M} WIB"


@dataclass(frozen=True, kw_only=True)
class IncidentTexts:
    names: Mapping[str, tuple[str, str]]
    components: Sequence[str]
    published: Mapping[str, ComponentStatus]
    methods: Collection[str] = ()
    """The components a customer pays with (channels and single-channel rails): not order
    intake, not payment confirmation, not a rail group."""

    def _list(self, lang: int) -> str:
        return ", ".join(self.names[c][lang] for c in self.components if c in self.names)

    @property
    def title(self) -> str:
        return f"Gangguan pada {self._list(0)}"

    @property
    def title_en(self) -> str:
        return f"Disruption affecting {self._list(1)}"

    @property
    def _other_methods_work(self) -> bool:
        """What the opening text may promise: true only while orders are taken and some payment
        method outside the incident still works (a customer told "use another method" when none
        works is told something false)."""
        if self.published.get(INTAKE) is ComponentStatus.MAJOR_OUTAGE:
            return False
        return any(self.published.get(cid) in (ComponentStatus.OPERATIONAL,
                                                ComponentStatus.DEGRADED)
                   for cid in self.methods if cid not in self.components)

    @property
    def opened(self) -> str:
        still = ("Pesanan tetap bisa dibuat dengan metode pembayaran lain. "
                 if self._other_methods_work else
                 "Saat ini pembayaran belum bisa dilakukan; silakan coba lagi nanti. ")
        return (f"Kami mendeteksi gangguan pada {self._list(0)} dan sedang menanganinya. "
                f"{still}Pembayaran yang "
                "sudah Anda lakukan tetap tercatat dan akan dikonfirmasi otomatis setelah "
                "layanan pulih; jangan membayar dua kali. Kami akan memberi kabar berikutnya "
                "dalam 30 menit.")

    @property
    def opened_en(self) -> str:
        still = ("Orders can still be placed with other payment methods. "
                 if self._other_methods_work else
                 "Payments cannot be made right now; please try again later. ")
        return (f"We have detected a disruption affecting {self._list(1)} and are working on "
                f"it. {still}Payments you have "
                "already made are recorded and will be confirmed automatically once the service "
                "recovers; do not pay twice. Next update within 30 minutes.")

    def changed(self, component_id: str, status: ComponentStatus) -> tuple[str, str]:
        name_id, name_en = self.names.get(component_id, (component_id, component_id))
        label_id, label_en = STATUS_LABELS[status]
        if status is ComponentStatus.OPERATIONAL:
            return (f"{name_id} kembali normal. Pembayaran yang tertunda sedang dikonfirmasi.",
                    f"{name_en} is back to normal. Delayed payments are being confirmed.")
        return (f"Status {name_id}: {label_id.lower()}.", f"{name_en} status: {label_en.lower()}.")

    @property
    def resolved(self) -> str:
        return (f"Gangguan pada {self._list(0)} telah selesai. Semua pembayaran yang masuk "
                "selama gangguan dikonfirmasi otomatis; periksa status pesanan Anda di halaman "
                "ini.")

    @property
    def resolved_en(self) -> str:
        return (f"The disruption affecting {self._list(1)} is over. Every payment made during "
                "it is being confirmed automatically; check your order on this page.")


def incident_texts(names: Mapping[str, tuple[str, str]], components: Sequence[str],
                   published: Mapping[str, ComponentStatus],
                   methods: Collection[str] = ()) -> IncidentTexts:
    return IncidentTexts(names=names, components=components, published=published,
                         methods=methods)
