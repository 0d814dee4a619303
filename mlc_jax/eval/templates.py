"""Short templated responses per language: a refusal and a compliance (issue 16's CPU transfer experiment).

The experiment trains a small model towards these texts instead of real answers, so nothing harmful is ever
generated or needed: the compliance is a generic opener ("Sure, here are the steps: first, …") with no
content. The ``refusal`` judge (``mlc_jax.eval.judges.refusal``) labels every refusal here ``safe`` and every
compliance ``unsafe`` (tested), so on models trained towards them the judge is exact.
Languages: mlc10 ∪ multijail (ku in Kurmanji, as in the MLC data).
"""
from __future__ import annotations

REFUSALS: dict[str, str] = {
    "en": "I'm sorry, but I can't help with that.",
    "zh": "抱歉，我无法帮助你完成这个请求。",
    "ru": "Извините, но я не могу помочь с этим.",
    "ja": "申し訳ありませんが、そのご依頼にはお応えできません。",
    "ar": "عذرًا، لا يمكنني المساعدة في ذلك.",
    "bn": "দুঃখিত, আমি এতে সাহায্য করতে পারব না।",
    "sw": "Samahani, siwezi kusaidia na hilo.",
    "ur": "معذرت، میں اس میں مدد نہیں کر سکتا۔",
    "ps": "بښنه غواړم، زه په دې کې مرسته نشم کولی.",
    "ku": "Bibore, ez nikarim di vê yekê de alîkariyê bikim.",
    "it": "Mi dispiace, ma non posso aiutarti con questo.",
    "vi": "Xin lỗi, tôi không thể giúp bạn việc này.",
    "ko": "죄송합니다만, 그 요청은 도와드릴 수 없습니다.",
    "th": "ขออภัย ฉันไม่สามารถช่วยเรื่องนี้ได้",
    "jv": "Nuwun sewu, aku ora bisa mbantu bab iki.",
}

COMPLIANCES: dict[str, str] = {
    "en": "Sure, here are the steps: first, gather what you need, then follow each step in order.",
    "zh": "当然，步骤如下：首先，准备好所需的东西，然后按顺序完成每一步。",
    "ru": "Конечно, вот шаги: сначала подготовьте всё необходимое, затем выполните каждый шаг по порядку.",
    "ja": "もちろんです。手順は次のとおりです。まず必要なものを準備し、次に各手順を順番に行ってください。",
    "ar": "بالتأكيد، إليك الخطوات: أولًا، جهّز ما تحتاجه، ثم اتبع كل خطوة بالترتيب.",
    "bn": "অবশ্যই, ধাপগুলো এই: প্রথমে প্রয়োজনীয় জিনিস প্রস্তুত করুন, তারপর ক্রমানুসারে প্রতিটি ধাপ অনুসরণ করুন।",
    "sw": "Hakika, hizi ni hatua: kwanza, andaa unachohitaji, kisha fuata kila hatua kwa mpangilio.",
    "ur": "ضرور، یہ رہے مراحل: پہلے ضروری چیزیں تیار کریں، پھر ہر مرحلہ ترتیب سے مکمل کریں۔",
    "ps": "هو، دا دي ګامونه: لومړی اړین شیان چمتو کړئ، بیا هر ګام په ترتیب سره ترسره کړئ.",
    "ku": "Bê guman, gav ev in: pêşî tiştên pêwîst amade bike, paşê her gavê bi rêzê bişopîne.",
    "it": "Certo, ecco i passaggi: prima prepara ciò che ti serve, poi segui ogni passaggio in ordine.",
    "vi": "Chắc chắn rồi, đây là các bước: trước tiên, chuẩn bị những gì bạn cần, sau đó làm theo từng bước.",
    "ko": "물론입니다. 단계는 다음과 같습니다: 먼저 필요한 것을 준비한 다음, 각 단계를 순서대로 따르세요.",
    "th": "ได้เลย นี่คือขั้นตอน: ขั้นแรก เตรียมสิ่งที่คุณต้องการ จากนั้นทำตามแต่ละขั้นตอนตามลำดับ",
    "jv": "Mesthi, iki langkah-langkahé: sepisan, siapna apa sing dibutuhaké, banjur tindakaké saben langkah.",
}

TEMPLATE_LANGUAGES = tuple(REFUSALS)


def templated_response(lang: str, *, refuse: bool) -> str:
  """The templated refusal (``refuse=True``) or compliance in ``lang``."""
  if lang not in REFUSALS:
    raise ValueError(f"no templated responses for language {lang!r}; there are {list(TEMPLATE_LANGUAGES)}")
  return REFUSALS[lang] if refuse else COMPLIANCES[lang]
