"""Generate the synthetic demo competition: is a paper abstract medical (1) or not (0)?

Deterministic (random.Random(7)), standard library only. Run from the repository root:

    python data/make_demo.py

Writes train.csv, test.csv, testB.csv, test_labels.csv, testB_labels.csv and
sample_submission.csv next to this file. About 15% of papers are "hard": engineering
papers that work on medical data (label 0), or medical papers that use machine learning (label 1).
"""
import csv
import random
import re
from pathlib import Path

OUT = Path(__file__).resolve().parent
rng = random.Random(7)


def words(text):
    return [w.strip() for w in text.split("|") if w.strip()]


V = {  # slot name -> phrases; every phrase filled into an abstract may become a keyword
    # medical
    "disease": words("""breast cancer|colorectal cancer|non-small cell lung cancer|pancreatic adenocarcinoma|
        hepatocellular carcinoma|prostate cancer|glioblastoma|acute myeloid leukemia|diffuse large B-cell lymphoma|
        melanoma|ovarian cancer|gastric cancer|atrial fibrillation|heart failure|acute myocardial infarction|
        coronary artery disease|hypertension|ischemic stroke|type 2 diabetes|chronic kidney disease|sepsis|
        community-acquired pneumonia|tuberculosis|HIV infection|hepatitis B|COVID-19|influenza|malaria|
        rheumatoid arthritis|systemic lupus erythematosus|multiple sclerosis|Parkinson's disease|
        Alzheimer's disease|major depressive disorder|schizophrenia|asthma|chronic obstructive pulmonary disease|
        osteoporosis|psoriasis|inflammatory bowel disease|preeclampsia|neonatal jaundice|childhood obesity|
        iron deficiency anaemia|migraine|epilepsy|cystic fibrosis|sickle cell disease|thyroid nodules|endometriosis|
        knee osteoarthritis|acute kidney injury|pulmonary embolism|aortic stenosis|diabetic retinopathy|
        cervical cancer|bladder cancer|peptic ulcer disease|cirrhosis|postoperative delirium"""),
    "design": words("""randomized controlled trial|double-blind placebo-controlled trial|prospective cohort study|
        retrospective cohort study|case-control study|cross-sectional survey|systematic review and meta-analysis|
        multicentre observational study|phase II clinical trial|population-based registry study|
        single-centre pilot study|nested case-control analysis"""),
    "population": words("""adult patients|elderly patients|children under five|pregnant women|postmenopausal women|
        hospitalised patients|outpatients|intensive care unit patients|kidney transplant recipients|
        older adults in nursing homes|adolescents|newborn infants|patients undergoing surgery|veterans|
        rural primary care patients|haemodialysis patients"""),
    "outcome": words("""overall survival|progression-free survival|30-day mortality|all-cause mortality|
        hospital readmission|length of hospital stay|tumour response rate|major adverse cardiac events|
        glycaemic control|blood pressure control|quality of life|disease recurrence|incidence of complications|
        symptom severity|relapse rate|time to remission"""),
    "treatment": words("""adjuvant chemotherapy|neoadjuvant radiotherapy|immune checkpoint inhibitors|
        low-dose aspirin|metformin|statin therapy|anticoagulation with warfarin|direct oral anticoagulants|
        early mobilisation|a structured exercise programme|vitamin D supplementation|antibiotic prophylaxis|
        corticosteroid therapy|laparoscopic resection|percutaneous coronary intervention|
        cognitive behavioural therapy|intravenous iron|a nurse-led telemonitoring programme|
        a reduced dosage regimen|insulin pump therapy"""),
    "exam": words("""magnetic resonance imaging|contrast-enhanced CT|positron emission tomography|
        transthoracic echocardiography|serum biomarkers|histopathological examination|liquid biopsy|
        genetic screening|ultrasound examination|spirometry|electrocardiography|tumour biopsy"""),
    # non-medical
    "field": words("""graph neural networks|just-in-time compilers|power grid stability|legged robot locomotion|
        semiconductor device modelling|wireless sensor networks|distributed databases|federated learning|
        quantum error correction|lithium-ion battery management|wind turbine control|optical interconnects|
        autonomous driving|speech recognition|machine translation|recommender systems|program synthesis|
        static program analysis|cache coherence protocols|network congestion control|blockchain consensus|
        superconducting qubits|photonic crystals|thin-film transistors|MEMS accelerometers|traffic flow prediction|
        satellite image segmentation|3D point cloud registration|visual odometry|microgrid energy scheduling|
        smart contract verification|garbage collection|register allocation|GPU kernel scheduling|
        fluid-structure interaction|turbulent channel flow|topological insulators|plasma confinement|
        antenna array design|millimetre-wave communication|software fault localisation|code clone detection|
        time series forecasting|anomaly detection in logs|multi-agent path finding|reinforcement learning for games|
        knowledge graph completion|text-to-SQL parsing|image super-resolution|video compression|
        edge computing offloading|spiking neural networks|FPGA accelerators|solar cell efficiency|
        concrete crack detection|structural health monitoring of bridges|railway timetable optimisation|
        drone swarm coordination|hydraulic actuator control|coded caching"""),
    "approach": words("""a convex relaxation|a message-passing algorithm|a transformer architecture|
        a model predictive controller|a Bayesian optimisation framework|a lock-free data structure|
        a finite-element solver|a contrastive pre-training objective|a lightweight attention module|
        a mixed-integer linear program|a Kalman filter|a spectral clustering method|a genetic algorithm|
        a hardware-software co-design|an incremental type checker|a sparse matrix format|
        a physics-informed neural network|a graph partitioning heuristic|a diffusion model|
        a density functional theory calculation"""),
    "setting": words("""edge devices|large-scale clusters|embedded microcontrollers|public benchmarks|
        a 64-node testbed|real-world traffic traces|the IEEE 118-bus system|simulated urban scenes|
        open-source repositories|commodity GPUs|low-power IoT nodes|industrial datasets"""),
    "metric": words("""throughput|latency|energy consumption|memory footprint|accuracy|convergence speed|
        peak signal-to-noise ratio|bit error rate|compression ratio|tracking error|power efficiency|
        carrier mobility|F1 score|inference time"""),
    # hard examples
    "med_data": words("""medical images|chest X-ray images|MRI scans|electronic health records|
        hospital network traffic|ECG signals|DICOM archives|clinical text"""),
    "ml": words("""a deep convolutional neural network|a transformer-based model|gradient boosting|
        a graph neural network|a random forest classifier|a self-supervised learning model|
        a multimodal deep learning model|a recurrent neural network"""),
}
NUMS = {"n": lambda: str(rng.choice([48, 96, 120, 212, 350, 586, 1204, 2310, 4875, 12640])),
        "pct": lambda: f"{rng.randint(3, 48)}%", "x": lambda: f"{rng.randint(2, 19)}.{rng.randint(0, 9)}x",
        "hr": lambda: f"{rng.randint(40, 89) / 100:.2f}", "auc": lambda: f"0.{rng.randint(71, 97)}",
        "yrs": lambda: str(rng.randint(2, 10))}

TITLES = {
    1: words("""{treatment} versus standard care in {population} with {disease}: a {design}|
        Long-term {outcome} after {treatment} in {disease}|Risk factors for {disease} among {population}|
        {exam} findings predict {outcome} in {disease}|Efficacy and safety of {treatment} for {disease}|
        Incidence and prognosis of {disease} in {population}: a {design}|
        Association between {disease} and {outcome} in {population}|
        Role of {exam} in the early diagnosis of {disease}|Dosage optimisation of {treatment} in {population}|
        Trends in {disease} mortality over {yrs} years|Predictors of {outcome} in {population} treated with {treatment}|
        Clinical characteristics of {population} with {disease}|{disease} and the risk of {outcome}|
        Impact of {treatment} on {outcome}: a {design}|Diagnostic accuracy of {exam} for {disease}|
        Epidemiology of {disease} in {population}|Tumour imaging with {exam} in {disease}|
        A {design} of {treatment} in {disease}|Sex differences in {outcome} among patients with {disease}|
        Cost-effectiveness of {treatment} for {disease}"""),
    0: words("""Scaling {field} with {approach}|{approach} for {field} on {setting}|
        Towards energy-efficient {field}|Rethinking {field}: a {metric} perspective|
        Improving {metric} in {field} via {approach}|A survey of {field}|
        Robust {field} under uncertainty|Learning-based {field} for {setting}|
        On the limits of {metric} in {field}|Fast and accurate {field} using {approach}|
        Benchmarking {field} on {setting}|Provably correct {field} with {approach}|
        Reducing {metric} of {field} by {x}|An empirical study of {field}|
        Hardware acceleration of {field} on {setting}|Self-supervised {field}|
        Adaptive {field} with {approach}|Revisiting {field} at scale|
        Fault-tolerant {field} for {setting}|Joint optimisation of {metric} and {field}"""),
}
OPEN = {
    1: words("""{disease} remains a leading cause of morbidity in {population}.|
        Evidence on {treatment} in {population} with {disease} is limited.|
        The prognostic value of {exam} in {disease} is unclear.|
        Little is known about {outcome} among {population} with {disease}.|
        Guidelines for {disease} rely on {exam}, but its benefit for {population} is debated.|
        {treatment} is widely used in {disease} despite uncertain effects on {outcome}."""),
    0: words("""{field} is central to many modern systems, yet existing methods scale poorly.|
        Existing approaches to {field} suffer from high {metric}.|
        {field} on {setting} faces strict resource constraints.|
        Recent progress in {field} has been limited by {metric}.|
        Designers of {field} must trade {metric} against cost.|
        Prior work on {field} assumes idealised conditions that rarely hold on {setting}."""),
}
MIDDLE = {
    1: words("""We conducted a {design} of {n} {population} with {disease}.|
        In this {design}, {n} patients received {treatment} or placebo.|
        Patients were assessed with {exam} at baseline and after {yrs} years.|
        We enrolled {n} {population} and followed them for {outcome}.|
        Data from {n} {population} with {disease} were analysed with Cox regression.|
        Dosage of {treatment} was adjusted by body weight in {n} patients."""),
    0: words("""We propose {approach} that exploits structure in {field}.|
        Our method combines {approach} with a simple scheduling rule.|
        We implement the system on {setting} and release the code.|
        We formulate {field} as an optimisation problem and solve it with {approach}.|
        We derive an upper bound on {metric} and a matching algorithm based on {approach}.|
        A prototype built on {setting} validates the analysis."""),
}
RESULT = {
    1: words("""{treatment} reduced the risk of {outcome} (hazard ratio {hr}).|
        {exam} identified {disease} with a sensitivity of {pct} higher than usual care.|
        {outcome} improved by {pct} compared with controls.|
        Adverse events occurred in {pct} of patients.|
        After a median follow-up of {yrs} years, {outcome} favoured the intervention group."""),
    0: words("""Experiments on {setting} show a {x} speed-up in {metric}.|
        Our approach improves {metric} by {pct} over strong baselines.|
        The design reduces {metric} by {pct} without loss of accuracy.|
        Results on {setting} confirm a {x} speed-up at similar {metric}.|
        Simulations and measurements agree within {pct} on {metric}."""),
}
CLOSE = {
    1: words("""These findings support {treatment} in routine clinical practice.|
        Larger trials are needed to confirm the benefit for {population}.|
        Clinicians should consider screening {population} for {disease}."""),
    0: words("""The approach generalises to other problems in {field}.|
        Future work will extend the method to {setting}.|
        Our results suggest that {metric} is no longer the bottleneck."""),
}
# Hard papers mix both vocabularies in one shared pool of sentences; only their aim ({task}) decides
# the label: a clinical aim (1) or an engineering aim on medical data (0). Aims share words on purpose.
TASK = {1: words("""early cancer detection|cardiac risk prediction|survival time estimation|
            treatment response classification|drug dose optimisation|disease progression monitoring|
            metastasis screening|lesion localisation|mortality risk scoring|seizure forecasting|tumour grading|
            arrhythmia recognition|stroke outcome prediction|sepsis alerting|biopsy target selection|
            recurrence detection|radiotherapy planning|emergency triage|diagnosis of rare disease|
            fracture detection|glucose level forecasting|relapse risk assessment"""),
        0: words("""duplicate image detection|storage demand prediction|transfer time estimation|
        file type classification|storage cost optimisation|bandwidth usage monitoring|corrupted file screening|
        image quality scoring|archive growth forecasting|compression rate control|codec parameter selection|
        noise level estimation|lossless compression|encrypted storage|low-latency transmission|data deduplication|
        error-resilient wireless transfer|metadata anonymisation|resolution upscaling for display|
        scanner upload scheduling|archive retrieval ranking|format conversion""")}
HARD = dict(
    title=words("""{ml} for {task}: evaluation on {med_data}|{task} with {ml} on {med_data}|
        Towards {task} from {exam} data in {disease}|{task} for {population} using {ml}"""),
    open=words("""{med_data} of patients with {disease} are increasingly processed by {ml}.|
        Hospitals collect ever more {med_data}, yet existing pipelines scale poorly.|
        Recent advances in {field} make new uses of {med_data} feasible."""),
    middle=words("""We propose {ml} for {task} and train it on {n} {exam} studies.|
        Our method, based on {approach}, targets {task} for {population} with {disease}.|
        We study {task} using {ml} on {med_data} from {n} patients."""),
    result=words("""It improves {metric} by {pct} over strong baselines on {setting}.|
        On held-out data from {n} patients with {disease}, {task} improved by {pct}.|
        The model runs in real time on {setting}."""),
    close=words("""We expect the approach to support {task} in routine hospital workflows.|
        Code and trained weights are publicly available."""))

FIRST = words("""Wei|Li|Maria|John|Aisha|Kenji|Sofia|Lukas|Priya|Omar|Elena|Hiroshi|Fatima|Daniel|Chen|Olga|
    Carlos|Amara|Ingrid|Raj|Mei|Tomas|Nadia|Samuel|Yuki|Hannah|Ahmed|Lucia|Pavel|Grace""")
LAST = words("""Zhang|Wang|Garcia|Smith|Khan|Tanaka|Rossi|Muller|Patel|Haddad|Ivanova|Sato|Okafor|Nguyen|
    Kowalski|Silva|Johansson|Liu|Kim|Novak|Moreau|Chen|Fischer|Mensah|Lopez|Yamamoto|Brown|Singh|Costa|Petrov""")


def fill(template, chosen):
    """Fill {slot}s with numbers or phrases; a slot keeps its phrase for the whole paper (chosen)."""
    def one(match):
        slot = match.group(1)
        if slot in NUMS:
            return NUMS[slot]()
        if slot not in chosen:
            chosen[slot] = rng.choice(V[slot])
        return chosen[slot]
    text = re.sub(r"\{(\w+)\}", one, template)
    return text[0].upper() + text[1:]


def make_paper(label, hard):
    pools = HARD if hard else dict(title=TITLES[label], open=OPEN[label], middle=MIDDLE[label],
                                   result=RESULT[label], close=CLOSE[label])
    while True:
        chosen = {"task": rng.choice(TASK[label])} if hard else {}
        title = fill(rng.choice(pools["title"]), chosen)
        parts = rng.choice([["middle", "result"], ["open", "middle", "result"], ["open", "middle", "close"],
                            ["open", "middle", "result", "close"]])
        abstract = " ".join(fill(rng.choice(pools[part]), chosen) for part in parts)
        if 25 <= len(abstract.split()) <= 70 and len(chosen) >= 3:
            break
    keywords = [re.sub(r"^an? ", "", k) for k in rng.sample(list(chosen.values()), min(len(chosen), rng.randint(3, 5)))]
    authors = ", ".join(f"{rng.choice(FIRST)} {rng.choice(LAST)}" for _ in range(rng.randint(2, 5)))
    return {"title": title, "author": authors, "abstract": abstract, "Keywords": "; ".join(keywords), "label": label}


def make_split(start, count, positives):
    labels = [1] * positives + [0] * (count - positives)
    rng.shuffle(labels)
    hard = set(rng.sample(range(count), round(0.15 * count)))
    return [dict(uuid=start + i, **make_paper(label, i in hard)) for i, label in enumerate(labels)]


def write(name, rows, columns):
    with open(OUT / name, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {OUT / name}: {len(rows)} rows")


def main():
    train = make_split(0, 480, 216)
    test = make_split(1000, 120, 54)
    test_b = make_split(2000, 120, 54)
    write("train.csv", train, ["uuid", "title", "author", "abstract", "Keywords", "label"])
    for name, rows in (("test", test), ("testB", test_b)):
        write(f"{name}.csv", rows, ["uuid", "title", "author", "abstract"])
        write(f"{name}_labels.csv", rows, ["uuid", "Keywords", "label"])
    write("sample_submission.csv", [{"uuid": r["uuid"], "Keywords": "", "label": 0} for r in test],
          ["uuid", "Keywords", "label"])


if __name__ == "__main__":
    main()
